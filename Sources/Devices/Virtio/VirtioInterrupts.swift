import Synchronization

/// How a virtio-pci function interrupts its driver (virtio 1.2, 4.1.4.5 and 4.1.5.3): an ISR
/// status byte, an MSI-X table with its pending bits, and the INTx pin used while MSI-X is off.
///
/// A queue or configuration interrupt sets its ISR bit and then, with MSI-X on, sends the
/// vector the driver chose (or marks it pending while masked); with MSI-X off it raises INTx,
/// which stays up until the driver reads ISR. Called from the device thread (queue interrupts)
/// and vCPUs (register accesses); everything it changes is inside its one lock.
public final class VirtioInterrupts: Sendable {
    struct State {
        var isr: UInt8 = 0
        var intxHigh = false
        var intxDisabled = false
        var msix: MSIXTable
    }
    private let state: Mutex<State>
    private let sink: InterruptSink
    private let vectors: MessageVectors
    private let intx: SharedLines
    public let intxLine: UInt32
    private let name: String

    /// Interrupts raised, and how many went out as MSI-X messages / INTx assertions (the rest
    /// were held back by a mask, NO_VECTOR, or INTx disable).
    public let raised = Atomic<UInt64>(0)
    public let messagesSent = Atomic<UInt64>(0)
    public let intxAssertions = Atomic<UInt64>(0)

    public static let isrQueue: UInt8 = 1, isrConfig: UInt8 = 2

    /// `vectors` MSI-X vectors from `sink`; INTx on `intxLine` of `intx`.
    public init(name: String, vectors count: Int, sink: InterruptSink, intx: SharedLines, intxLine: UInt32) throws(WiringError) {
        self.name = name
        self.sink = sink
        vectors = try sink.messageVectors(count: count)
        self.intx = intx
        self.intxLine = intxLine
        state = Mutex(State(msix: MSIXTable(vectors: count)))
    }

    /// Raise an interrupt of kind `isrBit` on `vector` (NO_VECTOR: none, with MSI-X on).
    @inline(__always)
    public func raise(isrBit: UInt8, vector: UInt16) {
        raised.wrappingAdd(1, ordering: .relaxed)
        let send: Int? = state.withLock { s in
            s.isr |= isrBit
            if s.msix.enabled {
                let v = Int(vector)
                guard vector != VirtioCommonConfig.noVector, v < s.msix.count else { return nil }
                if s.msix.deliverable(v) { return v }
                s.msix.setPending(v, true)
                return nil
            }
            if !s.intxDisabled { setINTx(&s, true) }
            return nil
        }
        if let send { sendVector(send) }
    }

    /// The driver reads ISR: it gets the bits and they clear, and INTx drops (4.1.4.5).
    public func readISR() -> UInt8 {
        state.withLock { s in
            let v = s.isr
            s.isr = 0
            setINTx(&s, false)
            return v
        }
    }

    /// The PCI side changed: MSI-X enable and function mask (message control), INTx disable
    /// (the command register). Messages held back by a function mask go out once it lifts.
    public func pciControlChanged(msixEnabled: Bool, functionMasked: Bool, intxDisabled: Bool) {
        let fire: [Int] = state.withLock { s in
            s.msix.enabled = msixEnabled
            s.msix.functionMasked = functionMasked
            s.intxDisabled = intxDisabled
            if s.msix.enabled || s.intxDisabled { setINTx(&s, false) } else if s.isr != 0 { setINTx(&s, true) }
            return takeDeliverablePending(&s)
        }
        for v in fire { sendVector(v) }
    }

    /// A device reset: ISR clears and INTx drops. The MSI-X table belongs to PCI, not to the
    /// virtio device, and stays.
    public func reset() {
        state.withLock { s in
            s.isr = 0
            setINTx(&s, false)
        }
    }

    public func readTable(offset: UInt64, size: Int) -> UInt64 {
        state.withLock { $0.msix.readTable(offset: offset, size: size) }
    }

    public func readPBA(offset: UInt64, size: Int) -> UInt64 {
        state.withLock { $0.msix.readPBA(offset: offset, size: size) }
    }

    /// A write to the MSI-X table: each changed vector is reprogrammed before anything is
    /// sent on it, then messages its unmasking released go out.
    public func writeTable(offset: UInt64, size: Int, value: UInt64) -> WiringError? {
        var failure: WiringError?
        let fire: [Int] = state.withLock { s in
            let changed = s.msix.writeTable(offset: offset, size: size, value: value)
            guard !changed.isEmpty else { return [] }
            for v in changed {
                let e = s.msix.entries[v]
                do throws(WiringError) {
                    try sink.program(vectors, v, e.masked ? nil : e.message)
                } catch {
                    failure = WiringError("\(name): MSI-X vector \(v): \(error)")
                }
            }
            return takeDeliverablePending(&s)
        }
        for v in fire { sendVector(v) }
        return failure
    }

    /// How the driver left interrupts: "MSI-X", "INTx", or "no interrupts" (INTx disabled).
    public var mode: String {
        state.withLock { s in s.msix.enabled ? "MSI-X" : s.intxDisabled ? "no interrupts" : "INTx" }
    }

    public var isr: UInt8 { state.withLock { $0.isr } }
    public var msixTable: MSIXTable { state.withLock { $0.msix } }

    @inline(__always)
    private func sendVector(_ v: Int) {
        messagesSent.wrappingAdd(1, ordering: .relaxed)
        vectors.send(v)
    }

    private func setINTx(_ s: inout State, _ high: Bool) {
        guard s.intxHigh != high else { return }
        s.intxHigh = high
        if high { intxAssertions.wrappingAdd(1, ordering: .relaxed) }
        intx.change(intxLine, high: high)
    }

    /// Pending vectors that became deliverable; their pending bits are cleared.
    private func takeDeliverablePending(_ s: inout State) -> [Int] {
        var fire: [Int] = []
        for v in 0..<s.msix.count where s.msix.pending[v] && s.msix.deliverable(v) {
            s.msix.setPending(v, false)
            fire.append(v)
        }
        return fire
    }
}
