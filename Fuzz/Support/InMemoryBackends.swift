import Backends
import Devices
import Glibc
import Memory
import Synchronization

/// Interrupt wiring in plain memory, as the unit tests' RecordingInterrupts: line levels and
/// programmed MSI-X messages are recorded, doorbells are a map from address to event.
public final class InMemoryWiring: InterruptSink, DoorbellRegistrar {
    struct State {
        var lines: [UInt32: Bool] = [:]
        var programmed: [UInt32: MSIMessage] = [:]
        var nextVector: UInt32 = 24
        var doorbells: [UInt64: ObjectIdentifier] = [:]
    }
    private let state = Mutex(State())

    public init() {}

    public func setLine(_ line: UInt32, high: Bool) { state.withLock { $0.lines[line] = high } }

    public func messageVectors(count: Int) throws(WiringError) -> MessageVectors {
        let first = state.withLock { s in
            defer { s.nextVector += UInt32(count) }
            return s.nextVector
        }
        return MessageVectors(first: first, count: count)
    }

    public func program(_ vectors: MessageVectors, _ index: Int, _ message: MSIMessage?) throws(WiringError) {
        fuzzCheck(index >= 0 && index < vectors.count, "MSI-X vector \(index) programmed, the device has \(vectors.count)")
        state.withLock { $0.programmed[vectors.first + UInt32(index)] = message }
    }

    public func attach(_ event: EventFD, address: UInt64, width: UInt32) throws(WiringError) {
        try state.withLock { s throws(WiringError) in
            // As KVM: one ioeventfd per address and width.
            guard s.doorbells[address] == nil else { throw WiringError("doorbell at \(address) taken") }
            s.doorbells[address] = ObjectIdentifier(event)
        }
    }

    public func detach(_ event: EventFD, address: UInt64, width: UInt32) {
        state.withLock { s in
            fuzzCheck(s.doorbells[address] == ObjectIdentifier(event), "doorbell at \(address) detached by an event that does not own it")
            s.doorbells[address] = nil
        }
    }

    public func isHigh(_ line: UInt32) -> Bool { state.withLock { $0.lines[line] ?? false } }
    public var doorbellAddresses: Set<UInt64> { state.withLock { Set($0.doorbells.keys) } }
}

/// A disk in memory that fails when told to. Every request the device passes on must lie
/// inside the disk: the device checks ranges against the size, so one outside is a bug.
public final class InMemoryDisk: BlockBackend {
    public let path = "fuzz-disk"
    public let size: UInt64
    public let isReadOnly: Bool
    public let canDiscard: Bool
    /// errno to fail each kind of operation with (0: succeed).
    public struct Faults: Sendable {
        public var read: Int32 = 0, write: Int32 = 0, flush: Int32 = 0, discard: Int32 = 0
        public init() {}
    }
    private let faults: Faults
    private let bytes: Mutex<[UInt8]>

    public init(sectors: Int, readOnly: Bool, canDiscard: Bool, faults: Faults) {
        size = UInt64(sectors) * 512
        isReadOnly = readOnly
        self.canDiscard = canDiscard
        self.faults = faults
        bytes = Mutex([UInt8](repeating: 0x5A, count: sectors * 512))
    }

    private func checkInside(_ what: String, _ offset: UInt64, _ count: UInt64) {
        fuzzCheck(offset <= size && count <= size - offset, "\(what) of \(count) bytes at \(offset) outside the \(size)-byte disk")
    }

    public func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws(BlockIOError) {
        checkInside("read", offset, UInt64(count))
        if faults.read != 0 { throw BlockIOError(errno: faults.read) }
        bytes.withLock { b in b.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress! + Int(offset), byteCount: count) } }
    }

    public func write(from buffer: UnsafeRawPointer, count: Int, at offset: UInt64) throws(BlockIOError) {
        checkInside("write", offset, UInt64(count))
        fuzzCheck(!isReadOnly, "write to a read-only disk")
        if faults.write != 0 { throw BlockIOError(errno: faults.write) }
        bytes.withLock { b in b.withUnsafeMutableBytes { ($0.baseAddress! + Int(offset)).copyMemory(from: buffer, byteCount: count) } }
    }

    public func flush() throws(BlockIOError) {
        if faults.flush != 0 { throw BlockIOError(errno: faults.flush) }
    }

    public func discard(at offset: UInt64, count: UInt64) throws(BlockIOError) {
        checkInside("discard", offset, count)
        fuzzCheck(canDiscard, "discard on a disk that cannot")
        if faults.discard != 0 { throw BlockIOError(errno: faults.discard) }
        bytes.withLock { b in b.withUnsafeMutableBytes { _ = memset($0.baseAddress! + Int(offset), 0, Int(count)) } }
    }
}

/// A network in memory: frames queued by the target come out of `receive`; sent frames are
/// checked (each piece inside guest RAM, the whole no longer than a frame) and counted.
public final class InMemoryNetwork: NetworkBackend {
    public let name = "fuzz-net"
    public let receiveFD: Int32 = -1
    private let frames = Mutex<[[UInt8]]>([])
    private let memory: GuestMemory
    public let sent = Atomic<Int>(0)

    public init(memory: GuestMemory) { self.memory = memory }

    public func queue(_ frame: [UInt8]) { frames.withLock { $0.append(frame) } }

    public func receive(into buffer: UnsafeMutableRawPointer, capacity: Int) -> Int {
        frames.withLock { f in
            guard !f.isEmpty else { return 0 }
            let frame = f.removeFirst()
            let n = min(frame.count, capacity)
            frame.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress!, byteCount: n) }
            return n
        }
    }

    public func send(_ pieces: UnsafeBufferPointer<iovec>) -> Bool {
        var total = 0
        for piece in pieces {
            total += piece.iov_len
            fuzzCheck(piece.iov_base != nil && isGuestRAM(memory, piece.iov_base!, piece.iov_len),
                      "transmitted piece of \(piece.iov_len) bytes is not inside guest RAM")
        }
        fuzzCheck(total >= VirtioNet.headerSize && total <= VirtioNet.maxFrame, "transmitted a \(total)-byte frame")
        sent.wrappingAdd(1, ordering: .relaxed)
        return true
    }
}

/// Whether host bytes [p, p+count) are inside one of `memory`'s regions: what every buffer a
/// device touches on the guest's behalf must be.
public func isGuestRAM(_ memory: GuestMemory, _ p: UnsafeRawPointer, _ count: Int) -> Bool {
    memory.regions.contains { r in
        let start = UnsafeRawPointer(r.host)
        return p >= start && count >= 0 && UInt64(count) <= r.size && p - start <= Int(r.size) - count
    }
}
