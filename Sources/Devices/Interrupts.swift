import Synchronization

/// An MSI message, as an MSI-X table entry holds it: the address the device writes and the
/// data it writes there, which together name a CPU and a vector.
public struct MSIMessage: Equatable, Sendable {
    public var addressLow: UInt32
    public var addressHigh: UInt32
    public var data: UInt32
    public init(addressLow: UInt32, addressHigh: UInt32 = 0, data: UInt32) {
        self.addressLow = addressLow
        self.addressHigh = addressHigh
        self.data = data
    }
}

/// Something the host could not wire up (KVM refused a route, an irqfd or an ioeventfd).
public struct WiringError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Where device models send their interrupts. Devices know nothing of KVM: the machine
/// implements this over KVM_IRQ_LINE, irqfds and GSI routing, and unit tests over plain
/// memory. Class-bound, so a call is one witness-table jump: no box, no allocation.
public protocol InterruptSink: AnyObject, Sendable {
    /// Drive wire `line` (a GSI: an ISA IRQ or an IOAPIC pin) high or low. Callers track the
    /// level and call only on changes: the PIC and IOAPIC see ISA lines as edges.
    func setLine(_ line: UInt32, high: Bool)
    /// A block of `count` message vectors for one device, each with the eventfd that sends it.
    func messageVectors(count: Int) throws(WiringError) -> MessageVectors
    /// Program vector `index` of `vectors` with `message`; nil while it must not be sent (masked).
    func program(_ vectors: MessageVectors, _ index: Int, _ message: MSIMessage?) throws(WiringError)
}

/// A device's message vectors. Sending one is an eventfd write: the host (KVM's irqfd) turns
/// it into the message programmed for that vector, with no system call beyond the write.
public final class MessageVectors: Sendable {
    /// The sink's name for vector 0 (a GSI for KVM); the rest follow.
    public let first: UInt32
    public let events: [EventFD]

    public init(first: UInt32, count: Int) {
        self.first = first
        events = (0..<count).map { _ in EventFD() }
    }

    public var count: Int { events.count }

    @inline(__always)
    public func send(_ index: Int) { events[index].signal() }
}

/// Level-triggered lines shared by several PCI functions, as INTx pins are on a board: a line
/// stays high while any function holds it high (wired-OR).
public final class SharedLines: Sendable {
    let sink: InterruptSink
    private let holders = Mutex<[UInt32: Int]>([:])

    public init(sink: InterruptSink) { self.sink = sink }

    /// Whether `line` is high now (for tests and reports).
    public func isHigh(_ line: UInt32) -> Bool { holders.withLock { $0[line, default: 0] > 0 } }

    /// One function raises (`high`) or releases its hold on `line`.
    public func change(_ line: UInt32, high: Bool) {
        holders.withLock { h in
            let before = h[line, default: 0]
            let after = max(0, before + (high ? 1 : -1))
            h[line] = after
            if (before > 0) != (after > 0) { sink.setLine(line, high: after > 0) }
        }
    }
}

/// Registers doorbells: guest writes to an MMIO address that should only wake a device
/// thread. The machine implements it with KVM ioeventfds, so such a write never leaves the
/// guest's CPU for user space. A doorbell that could not be attached still works, slower:
/// the write arrives as an ordinary MMIO access and the device signals the event itself.
public protocol DoorbellRegistrar: AnyObject, Sendable {
    /// Make a guest write of `width` bytes at `address` signal `event`.
    func attach(_ event: EventFD, address: UInt64, width: UInt32) throws(WiringError)
    func detach(_ event: EventFD, address: UInt64, width: UInt32)
}

/// One interrupt wire of a device that owns it alone (the UART's IRQ 4): the sink and the
/// line's number. The device tracks its level and calls `set` only on changes.
public struct IRQLine: Sendable {
    public let sink: InterruptSink
    public let line: UInt32

    public init(sink: InterruptSink, line: UInt32) {
        self.sink = sink
        self.line = line
    }

    @inline(__always)
    public func set(_ high: Bool) { sink.setLine(line, high: high) }
}
