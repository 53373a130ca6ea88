import Devices
import Synchronization

/// An interrupt sink and doorbell registrar in plain memory, for device tests without KVM:
/// lines and programmed messages are recorded; a vector's sends are counted by its eventfd.
final class RecordingInterrupts: InterruptSink, DoorbellRegistrar {
    struct State {
        var lines: [UInt32: Bool] = [:]
        var lineChanges = 0
        var programmed: [UInt32: MSIMessage] = [:]
        var nextVector: UInt32 = 24
        var doorbells: [UInt64: EventFD] = [:]
    }
    let state = Mutex(State())
    /// Make `attach` fail (to test a device's fallback to MMIO kicks).
    let refuseDoorbells: Bool

    init(refuseDoorbells: Bool = false) { self.refuseDoorbells = refuseDoorbells }

    func setLine(_ line: UInt32, high: Bool) {
        state.withLock { s in
            s.lines[line] = high
            s.lineChanges += 1
        }
    }

    func messageVectors(count: Int) throws(WiringError) -> MessageVectors {
        let first = state.withLock { s in
            defer { s.nextVector += UInt32(count) }
            return s.nextVector
        }
        return MessageVectors(first: first, count: count)
    }

    func program(_ vectors: MessageVectors, _ index: Int, _ message: MSIMessage?) throws(WiringError) {
        state.withLock { $0.programmed[vectors.first + UInt32(index)] = message }
    }

    func attach(_ event: EventFD, address: UInt64, width: UInt32) throws(WiringError) {
        if refuseDoorbells { throw WiringError("doorbells refused (test)") }
        try state.withLock { s throws(WiringError) in
            guard s.doorbells[address] == nil else { throw WiringError("doorbell at \(address) taken") }
            s.doorbells[address] = event
        }
    }

    func detach(_ event: EventFD, address: UInt64, width: UInt32) {
        state.withLock { s in if s.doorbells[address] === event { s.doorbells[address] = nil } }
    }

    func isHigh(_ line: UInt32) -> Bool { state.withLock { $0.lines[line] ?? false } }
    var doorbellAddresses: [UInt64] { state.withLock { $0.doorbells.keys.sorted() } }
}
