internal import CAtomics
import Memory

/// A guest mistake found in a virtqueue (virtio 1.2, 2.7). Each carries the offending values.
///
/// Two kinds: the ring itself is broken (`needsReset`: the device can no longer trust the
/// queue, stops it and sets DEVICE_NEEDS_RESET), or one request's buffers are bad (the
/// request fails with the device's error status, and the queue goes on).
public enum VirtqueueError: Error, Equatable, Sendable, CustomStringConvertible {
    case badQueueSize(UInt16)
    case misaligned(String, address: UInt64)
    case ringOutsideRAM(String, address: UInt64, bytes: UInt64)
    case availIndexJump(avail: UInt16, lastSeen: UInt16, size: UInt16)
    case headOutOfRange(index: UInt16, size: UInt16)
    case nextOutOfRange(index: UInt16, limit: UInt32)
    case chainTooLong(head: UInt16, limit: Int)
    case indirectWithNext(head: UInt16)
    case nestedIndirect(head: UInt16)
    case indirectTableSize(address: UInt64, length: UInt32)
    case indirectTableOutsideRAM(address: UInt64, length: UInt32)
    /// The driver must put device-writable buffers after the readable ones (2.7.4.2); the
    /// request's layout is then unknowable.
    case readableAfterWritable(head: UInt16)
    // Per-request faults:
    case bufferOutsideRAM(address: UInt64, length: UInt32)
    case bufferReadOnly(address: UInt64, length: UInt32)
    /// A request the device cannot even answer (e.g. virtio-blk without a writable status byte).
    case unanswerable(head: UInt16, String)

    public var needsReset: Bool {
        switch self {
        case .bufferOutsideRAM, .bufferReadOnly: return false
        default: return true
        }
    }

    public var description: String {
        func h(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
        switch self {
        case .badQueueSize(let s): return "queue size \(s) is not a power of two in 1...32768"
        case .misaligned(let w, let a): return "\(w) at \(h(a)) is misaligned"
        case .ringOutsideRAM(let w, let a, let b): return "\(w) at \(h(a)) (\(b) bytes) is not in guest RAM"
        case .availIndexJump(let a, let l, let s): return "avail idx jumped from \(l) to \(a) (queue size \(s))"
        case .headOutOfRange(let i, let s): return "chain head \(i) is outside the queue (size \(s))"
        case .nextOutOfRange(let i, let l): return "descriptor next \(i) is outside the table (\(l) entries)"
        case .chainTooLong(let head, let l): return "chain from head \(head) is longer than \(l) descriptors (a loop?)"
        case .indirectWithNext(let head): return "chain \(head): indirect descriptor with NEXT set"
        case .nestedIndirect(let head): return "chain \(head): indirect descriptor inside an indirect table"
        case .indirectTableSize(let a, let l): return "indirect table at \(h(a)) has bad length \(l)"
        case .indirectTableOutsideRAM(let a, let l): return "indirect table at \(h(a)) (\(l) bytes) is not in guest RAM"
        case .bufferOutsideRAM(let a, let l): return "buffer at \(h(a)) (\(l) bytes) is not in guest RAM"
        case .bufferReadOnly(let a, let l): return "device-writable buffer at \(h(a)) (\(l) bytes) is read-only memory"
        case .readableAfterWritable(let head): return "chain \(head): device-readable descriptor after a writable one"
        case .unanswerable(let head, let why): return "request \(head) cannot be answered: \(why)"
        }
    }
}

/// One buffer of a chain: where it is, how long, which way data flows, and its host address
/// (nil if the guest's address was bad; the chain's `fault` then says why).
public struct DescriptorSegment: Sendable, Equatable {
    public var address: UInt64
    public var length: UInt32
    public var deviceWritable: Bool
    nonisolated(unsafe) public var pointer: UnsafeMutableRawPointer?
}

/// A request as the driver posted it: a head index and its buffers, readable ones first.
public struct DescriptorChain: Sendable {
    public var head: UInt16 = 0
    public var segments: [DescriptorSegment] = []
    /// The first per-request fault in the chain, if any.
    public var fault: VirtqueueError?

    public init() { segments.reserveCapacity(16) }
    /// An empty chain with no storage of its own (to swap a reused one in and out).
    public init(reserving capacity: Int) { segments.reserveCapacity(capacity) }

    public var readableLength: UInt64 { segments.reduce(0) { $0 + ($1.deviceWritable ? 0 : UInt64($1.length)) } }
    public var writableLength: UInt64 { segments.reduce(0) { $0 + ($1.deviceWritable ? UInt64($1.length) : 0) } }

    /// Call `body` with the host pieces of bytes [from, from+count) of the readable (or
    /// writable) stream. Returns false if that range is not fully available.
    public func forEachPiece(writable: Bool, from: UInt64, count: UInt64,
                             _ body: (UnsafeMutableRawPointer, Int) -> Bool) -> Bool {
        var skip = from, left = count
        for s in segments where s.deviceWritable == writable {
            if left == 0 { break }
            let len = UInt64(s.length)
            if skip >= len { skip -= len; continue }
            guard let p = s.pointer else { return false }
            let n = min(len - skip, left)
            if !body(p + Int(skip), Int(n)) { return false }
            left -= n
            skip = 0
        }
        return left == 0
    }

    /// Copy `count` bytes of the readable stream starting at `from` into `buffer`.
    public func gather(from: UInt64, into buffer: UnsafeMutableRawPointer, count: Int) -> Bool {
        var done = 0
        return forEachPiece(writable: false, from: from, count: UInt64(count)) { p, n in
            (buffer + done).copyMemory(from: p, byteCount: n)
            done += n
            return true
        }
    }

    /// Copy `count` bytes from `source` into the writable stream starting at `from`.
    public func scatter(from source: UnsafeRawPointer, count: Int, at: UInt64) -> Bool {
        var done = 0
        return forEachPiece(writable: true, from: at, count: UInt64(count)) { p, n in
            p.copyMemory(from: source + done, byteCount: n)
            done += n
            return true
        }
    }
}

/// A split virtqueue (virtio 1.2, 2.7) as the device side walks it: the descriptor table, the
/// driver's available ring and the device's used ring, all in guest RAM.
///
/// A value inside the transport's serving lock, so only the thread holding it walks the
/// rings. Every address the guest gives is checked with `GuestMemory` before it is touched;
/// the rings' own addresses once, when the queue is enabled. Index reads and the used-index
/// publish use acquire/release ordering, as the spec's memory model asks (the driver runs on
/// another CPU at the same time). Unchecked Sendable: it holds host pointers into guest RAM,
/// which outlives every queue.
public struct Virtqueue: @unchecked Sendable {
    public static let maxSize: UInt16 = 32768
    /// Longest indirect table accepted (Linux uses at most seg_max + 2 entries).
    public static let maxIndirectEntries: UInt32 = 1024
    static let descNext: UInt16 = 1, descWrite: UInt16 = 2, descIndirect: UInt16 = 4
    static let availNoInterrupt: UInt16 = 1

    public let index: Int
    let memory: GuestMemory
    public private(set) var size: UInt16 = 0
    public private(set) var isActive = false
    public var eventIndex = false
    private var desc: UnsafeMutableRawPointer?
    private var avail: UnsafeMutableRawPointer?
    private var used: UnsafeMutableRawPointer?
    /// Next avail entry to take, next used entry to fill.
    public private(set) var lastAvail: UInt16 = 0
    public private(set) var nextUsed: UInt16 = 0
    /// used->idx when the driver was last notified (for EVENT_IDX).
    private var signalledUsed: UInt16 = 0

    public init(index: Int, memory: GuestMemory) {
        self.index = index
        self.memory = memory
    }

    /// Start using the rings the driver configured. Throws (and stays inactive) if they are bad.
    public mutating func activate(size: UInt16, descriptors: UInt64, driverArea: UInt64, deviceArea: UInt64,
                         eventIndex: Bool) throws(VirtqueueError) {
        reset()
        guard size >= 1, size <= Self.maxSize, size & (size - 1) == 0 else { throw .badQueueSize(size) }
        let n = UInt64(size)
        guard descriptors % 16 == 0 else { throw .misaligned("descriptor table", address: descriptors) }
        guard driverArea % 2 == 0 else { throw .misaligned("available ring", address: driverArea) }
        guard deviceArea % 4 == 0 else { throw .misaligned("used ring", address: deviceArea) }
        guard let d = memory.pointer(descriptors, count: 16 * n) else {
            throw .ringOutsideRAM("descriptor table", address: descriptors, bytes: 16 * n)
        }
        guard let a = memory.pointer(driverArea, count: 6 + 2 * n) else {
            throw .ringOutsideRAM("available ring", address: driverArea, bytes: 6 + 2 * n)
        }
        guard let u = memory.writablePointer(deviceArea, count: 6 + 8 * n) else {
            throw .ringOutsideRAM("used ring", address: deviceArea, bytes: 6 + 8 * n)
        }
        self.size = size
        desc = d
        avail = a
        used = u
        self.eventIndex = eventIndex
        isActive = true
    }

    /// Where the three parts of an active ring are in our address space: what a vhost-user
    /// back-end is told (it maps guest RAM too, and translates through our addresses).
    public var hostAddresses: (descriptors: UInt64, driverArea: UInt64, deviceArea: UInt64)? {
        guard isActive, let desc, let avail, let used else { return nil }
        return (UInt64(UInt(bitPattern: desc)), UInt64(UInt(bitPattern: avail)), UInt64(UInt(bitPattern: used)))
    }

    public mutating func reset() {
        isActive = false
        size = 0
        desc = nil; avail = nil; used = nil
        lastAvail = 0; nextUsed = 0; signalledUsed = 0
    }

    /// The driver's avail->idx, read with acquire so the ring entries and descriptors it
    /// publishes are visible after it.
    @inline(__always)
    var availIndex: UInt16 { UInt16(littleEndian: sys_load_acquire_u16(avail! + 2)) }

    public var hasAvailable: Bool { isActive && availIndex != lastAvail }

    /// How many chains the driver has posted that the device has not taken.
    public var availableCount: UInt16 { isActive ? availIndex &- lastAvail : 0 }

    /// Take the next available chain into `chain`. Returns false when the ring is empty.
    /// Structural errors throw; per-buffer faults are left in `chain.fault`.
    public mutating func pop(into chain: inout DescriptorChain) throws(VirtqueueError) -> Bool {
        guard isActive, let avail else { return false }
        let availIdx = availIndex
        if availIdx == lastAvail { return false }
        guard availIdx &- lastAvail <= size else {
            throw .availIndexJump(avail: availIdx, lastSeen: lastAvail, size: size)
        }
        let slot = Int(lastAvail & (size - 1))
        let head = UInt16(littleEndian: avail.loadUnaligned(fromByteOffset: 4 + 2 * slot, as: UInt16.self))
        lastAvail &+= 1
        chain.head = head
        chain.segments.removeAll(keepingCapacity: true)
        chain.fault = nil
        guard head < size else { throw .headOutOfRange(index: head, size: size) }
        try walk(&chain, table: desc!, entries: UInt32(size), start: head, indirect: false)
        return true
    }

    private func walk(_ chain: inout DescriptorChain, table: UnsafeMutableRawPointer, entries: UInt32,
                      start: UInt16, indirect: Bool) throws(VirtqueueError) {
        var i = UInt32(start)
        var count = 0
        while true {
            count += 1
            guard count <= Int(entries) else { throw .chainTooLong(head: chain.head, limit: Int(entries)) }
            let d = table + Int(i) * 16
            let address = UInt64(littleEndian: d.loadUnaligned(as: UInt64.self))
            let length = UInt32(littleEndian: d.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
            let flags = UInt16(littleEndian: d.loadUnaligned(fromByteOffset: 12, as: UInt16.self))
            let next = UInt16(littleEndian: d.loadUnaligned(fromByteOffset: 14, as: UInt16.self))
            if flags & Self.descIndirect != 0 {
                if indirect { throw .nestedIndirect(head: chain.head) }
                if flags & Self.descNext != 0 { throw .indirectWithNext(head: chain.head) }
                guard length % 16 == 0, length > 0, length / 16 <= Self.maxIndirectEntries else {
                    throw .indirectTableSize(address: address, length: length)
                }
                guard let t = memory.pointer(address, count: UInt64(length)) else {
                    throw .indirectTableOutsideRAM(address: address, length: length)
                }
                try walk(&chain, table: t, entries: length / 16, start: 0, indirect: true)
                return
            }
            let writable = flags & Self.descWrite != 0
            if !writable && chain.segments.last?.deviceWritable == true { throw .readableAfterWritable(head: chain.head) }
            addSegment(&chain, address: address, length: length, writable: writable)
            guard flags & Self.descNext != 0 else { return }
            guard UInt32(next) < entries else { throw .nextOutOfRange(index: next, limit: entries) }
            i = UInt32(next)
        }
    }

    private func addSegment(_ chain: inout DescriptorChain, address: UInt64, length: UInt32, writable: Bool) {
        var pointer: UnsafeMutableRawPointer?
        if writable {
            pointer = memory.writablePointer(address, count: UInt64(length))
            if pointer == nil && chain.fault == nil {
                chain.fault = memory.contains(address, count: UInt64(length))
                    ? .bufferReadOnly(address: address, length: length)
                    : .bufferOutsideRAM(address: address, length: length)
            }
        } else {
            pointer = memory.pointer(address, count: UInt64(length))
            if pointer == nil && chain.fault == nil { chain.fault = .bufferOutsideRAM(address: address, length: length) }
        }
        chain.segments.append(DescriptorSegment(address: address, length: length, deviceWritable: writable, pointer: pointer))
    }

    /// Give back the last `count` chains taken with `pop`, unused: the next `pop` returns them
    /// again. (The driver cannot tell: nothing was written to the used ring.)
    public mutating func unpop(_ count: UInt16) {
        lastAvail &-= count
    }

    /// Return a chain to the driver with `written` bytes of it filled in. The element is
    /// written first, then used->idx is published with release ordering.
    public mutating func push(head: UInt16, written: UInt32) {
        guard isActive, let used else { return }
        let slot = Int(nextUsed & (size - 1))
        let element = used + 4 + 8 * slot
        element.storeBytes(of: UInt32(head).littleEndian, as: UInt32.self)
        element.storeBytes(of: written.littleEndian, toByteOffset: 4, as: UInt32.self)
        nextUsed &+= 1
        sys_store_release_u16(used + 2, nextUsed.littleEndian)
    }

    /// After taking chains: tell the driver (EVENT_IDX's avail_event) where to kick next, and
    /// return whether more arrived meanwhile (so the caller loops instead of missing a kick).
    public func enableNotifications() -> Bool {
        guard isActive, let used else { return false }
        if eventIndex {
            used.storeBytes(of: lastAvail.littleEndian, toByteOffset: 4 + 8 * Int(size), as: UInt16.self)
        }
        sys_fence_seq_cst()
        return availIndex != lastAvail
    }

    /// Whether the driver wants an interrupt for what was pushed since the last one: its
    /// used_event with EVENT_IDX, else the NO_INTERRUPT flag. Call after `push`es.
    public mutating func needsInterrupt() -> Bool {
        guard isActive, let avail else { return false }
        sys_fence_seq_cst()
        let new = nextUsed, old = signalledUsed
        signalledUsed = new
        if eventIndex {
            let usedEvent = UInt16(littleEndian: avail.loadUnaligned(fromByteOffset: 4 + 2 * Int(size), as: UInt16.self))
            return new &- usedEvent &- 1 < new &- old
        }
        let flags = UInt16(littleEndian: avail.loadUnaligned(as: UInt16.self))
        return flags & Self.availNoInterrupt == 0 && new != old
    }
}
