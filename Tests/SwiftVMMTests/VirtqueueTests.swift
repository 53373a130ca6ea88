import Devices
import Memory
import Testing

/// Split rings built by hand in a real GuestMemory, the way a driver lays them out, so the
/// walker sees exactly what a guest could give it. Queue 0's rings are at `desc`, `avail` and
/// `used`; another queue's at `base(forQueue:)` (same layout, 0x3000 apart).
struct RingBuilder {
    let memory: GuestMemory
    let size: UInt16
    static let desc: UInt64 = 0x10000, avail: UInt64 = 0x11000, used: UInt64 = 0x12000
    static let indirect: UInt64 = 0x13000, data: UInt64 = 0x20000
    /// The hypercall page's place: RAM the guest (and devices) must not write.
    static let readOnly: Range<UInt64> = 0x2000 ..< 0x3000
    /// This ring's descriptor table, available ring and used ring.
    let descAddress: UInt64, availAddress: UInt64, usedAddress: UInt64
    private(set) var availIdx: UInt16 = 0

    /// Where queue `queue`'s rings go: queue 0 at `desc`, queues 1 to 63 from 0x40000 (below
    /// the addresses tests put their buffers at, 0x100000 and up, and above `data`'s).
    static func base(forQueue queue: Int) -> UInt64 {
        precondition(queue < 64)
        return queue == 0 ? desc : 0x40000 + UInt64(queue - 1) * 0x3000
    }

    init(size: UInt16, memorySize: UInt64 = 4 << 20) throws {
        memory = try GuestMemory(size: memorySize, readOnlyRanges: [Self.readOnly])
        self.size = size
        (descAddress, availAddress, usedAddress) = (Self.desc, Self.avail, Self.used)
    }

    /// Fresh, zeroed rings in existing memory (a driver setting its queue up again), at
    /// `base` (queue 0's place unless given).
    init(memory: GuestMemory, size: UInt16, base: UInt64 = RingBuilder.desc) throws {
        self.memory = memory
        self.size = size
        (descAddress, availAddress, usedAddress) = (base, base + 0x1000, base + 0x2000)
        try memory.fill(0, at: base, count: 0x3000)
    }

    func queue(eventIndex: Bool = false) throws -> Virtqueue {
        var q = Virtqueue(index: 0, memory: memory)
        try q.activate(size: size, descriptors: descAddress, driverArea: availAddress, deviceArea: usedAddress,
                       eventIndex: eventIndex)
        return q
    }

    /// Descriptor `i` of this ring's table (or of the indirect `table`).
    func setDescriptor(_ i: Int, address: UInt64, length: UInt32, flags: UInt16, next: UInt16 = 0,
                       table: UInt64? = nil) throws {
        let base = (table ?? descAddress) + UInt64(i) * 16
        try memory.store(address, at: base)
        try memory.store(length, at: base + 8)
        try memory.store(flags, at: base + 12)
        try memory.store(next, at: base + 14)
    }

    mutating func post(_ head: UInt16) throws {
        try memory.store(head, at: availAddress + 4 + 2 * UInt64(availIdx % size))
        availIdx &+= 1
        try memory.store(availIdx, at: availAddress + 2)
    }

    func setAvailIdx(_ v: UInt16) throws { try memory.store(v, at: availAddress + 2) }
    func setAvailFlags(_ v: UInt16) throws { try memory.store(v, at: availAddress) }
    func setUsedEvent(_ v: UInt16) throws { try memory.store(v, at: availAddress + 4 + 2 * UInt64(size)) }
    var usedIdx: UInt16 { memory.load(UInt16.self, at: usedAddress + 2)! }
    var availEvent: UInt16 { memory.load(UInt16.self, at: usedAddress + 4 + 8 * UInt64(size))! }
    func usedElement(_ i: Int) -> (id: UInt32, length: UInt32) {
        (memory.load(UInt32.self, at: usedAddress + 4 + 8 * UInt64(i))!, memory.load(UInt32.self, at: usedAddress + 8 + 8 * UInt64(i))!)
    }
}

let next: UInt16 = 1, write: UInt16 = 2, indirectFlag: UInt16 = 4

@Suite("Split virtqueue walker")
struct VirtqueueTests {
    @Test("a readable + two writable chain comes out in order, with host pointers; push publishes it")
    func simpleChain() throws {
        var r = try RingBuilder(size: 8)
        var q = try r.queue()
        try r.setDescriptor(0, address: RingBuilder.data, length: 16, flags: next, next: 3)
        try r.setDescriptor(3, address: RingBuilder.data + 0x1000, length: 512, flags: next | write, next: 5)
        try r.setDescriptor(5, address: RingBuilder.data + 0x2000, length: 1, flags: write)
        try r.post(0)
        var chain = DescriptorChain()
        #expect(q.hasAvailable)
        #expect(try { let popped = try q.pop(into: &chain); return popped }())
        #expect(chain.head == 0)
        #expect(chain.segments.map(\.length) == [16, 512, 1])
        #expect(chain.segments.map(\.deviceWritable) == [false, true, true])
        #expect(chain.segments.allSatisfy { $0.pointer != nil })
        #expect(chain.fault == nil)
        #expect(chain.readableLength == 16 && chain.writableLength == 513)
        #expect(try !{ let popped = try q.pop(into: &chain); return popped }())
        q.push(head: 0, written: 513)
        #expect(r.usedIdx == 1)
        #expect(r.usedElement(0) == (0, 513))
    }

    @Test("gather and scatter cross descriptor boundaries")
    func gatherScatter() throws {
        var r = try RingBuilder(size: 4)
        var q = try r.queue()
        try r.memory.write([1, 2, 3], at: RingBuilder.data)
        try r.memory.write([4, 5, 6, 7], at: RingBuilder.data + 0x100)
        try r.setDescriptor(0, address: RingBuilder.data, length: 3, flags: next, next: 1)
        try r.setDescriptor(1, address: RingBuilder.data + 0x100, length: 4, flags: next, next: 2)
        try r.setDescriptor(2, address: RingBuilder.data + 0x200, length: 2, flags: next | write, next: 3)
        try r.setDescriptor(3, address: RingBuilder.data + 0x300, length: 2, flags: write)
        try r.post(0)
        var chain = DescriptorChain()
        _ = try q.pop(into: &chain)
        var out = [UInt8](repeating: 0, count: 5)
        #expect(out.withUnsafeMutableBytes { chain.gather(from: 1, into: $0.baseAddress!, count: 5) })
        #expect(out == [2, 3, 4, 5, 6])
        #expect(!out.withUnsafeMutableBytes { chain.gather(from: 3, into: $0.baseAddress!, count: 5) })
        #expect([UInt8](arrayLiteral: 9, 8, 7).withUnsafeBytes { chain.scatter(from: $0.baseAddress!, count: 3, at: 1) })
        #expect(r.memory.bytes(at: RingBuilder.data + 0x201, count: 1) == [9])
        #expect(r.memory.bytes(at: RingBuilder.data + 0x300, count: 2) == [8, 7])
    }

    @Test("a descriptor loop is a structural error (device needs reset)")
    func loop() throws {
        var r = try RingBuilder(size: 4)
        var q = try r.queue()
        try r.setDescriptor(0, address: RingBuilder.data, length: 16, flags: next, next: 1)
        try r.setDescriptor(1, address: RingBuilder.data, length: 16, flags: next, next: 0)
        try r.post(0)
        var chain = DescriptorChain()
        #expect(throws: VirtqueueError.chainTooLong(head: 0, limit: 4)) { try q.pop(into: &chain) }
        #expect(VirtqueueError.chainTooLong(head: 0, limit: 4).needsReset)
    }

    @Test("a chain longer than the queue is refused, without a loop in it")
    func tooLong() throws {
        // Each index appears once, but the chain needs more descriptors than the queue has:
        // only possible with a self-loop at the end.
        var r = try RingBuilder(size: 2)
        var q = try r.queue()
        try r.setDescriptor(0, address: RingBuilder.data, length: 1, flags: next, next: 1)
        try r.setDescriptor(1, address: RingBuilder.data, length: 1, flags: next, next: 1)
        try r.post(0)
        var chain = DescriptorChain()
        #expect(throws: VirtqueueError.chainTooLong(head: 0, limit: 2)) { try q.pop(into: &chain) }
    }

    @Test("head and next indices outside the table")
    func indicesOutOfRange() throws {
        var r = try RingBuilder(size: 4)
        var q = try r.queue()
        try r.post(9)
        var chain = DescriptorChain()
        #expect(throws: VirtqueueError.headOutOfRange(index: 9, size: 4)) { try q.pop(into: &chain) }
        try r.setDescriptor(1, address: RingBuilder.data, length: 1, flags: next, next: 4)
        try r.post(1)
        #expect(throws: VirtqueueError.nextOutOfRange(index: 4, limit: 4)) { try q.pop(into: &chain) }
    }

    @Test("buffers outside RAM, wrapping the address space, or in read-only RAM fail the request only")
    func badBuffers() throws {
        var r = try RingBuilder(size: 8)
        var q = try r.queue()
        var chain = DescriptorChain()
        // 1 TiB: not RAM.
        try r.setDescriptor(0, address: 1 << 40, length: 512, flags: write)
        try r.post(0)
        #expect(try { let popped = try q.pop(into: &chain); return popped }())
        #expect(chain.fault == .bufferOutsideRAM(address: 1 << 40, length: 512))
        #expect(chain.segments[0].pointer == nil)
        #expect(chain.fault?.needsReset == false)
        // Starts in RAM, oversized length runs past its end.
        try r.setDescriptor(1, address: RingBuilder.data, length: 0xFFFF_F000, flags: write)
        try r.post(1)
        #expect(try { let popped = try q.pop(into: &chain); return popped }())
        #expect(chain.fault == .bufferOutsideRAM(address: RingBuilder.data, length: 0xFFFF_F000))
        // Wraps around 2^64.
        try r.setDescriptor(2, address: UInt64.max - 15, length: 64, flags: 0)
        try r.post(2)
        #expect(try { let popped = try q.pop(into: &chain); return popped }())
        #expect(chain.fault == .bufferOutsideRAM(address: UInt64.max - 15, length: 64))
        // Device-writable buffer in the read-only hypercall page; readable there is fine.
        try r.setDescriptor(3, address: 0x2000, length: 8, flags: next, next: 4)
        try r.setDescriptor(4, address: 0x2010, length: 8, flags: write)
        try r.post(3)
        #expect(try { let popped = try q.pop(into: &chain); return popped }())
        #expect(chain.segments[0].pointer != nil)
        #expect(chain.fault == .bufferReadOnly(address: 0x2010, length: 8))
    }

    @Test("a device-readable descriptor after a writable one is refused")
    func readableAfterWritable() throws {
        var r = try RingBuilder(size: 4)
        var q = try r.queue()
        try r.setDescriptor(0, address: RingBuilder.data, length: 16, flags: next | write, next: 1)
        try r.setDescriptor(1, address: RingBuilder.data, length: 1, flags: 0)
        try r.post(0)
        var chain = DescriptorChain()
        #expect(throws: VirtqueueError.readableAfterWritable(head: 0)) { try q.pop(into: &chain) }
    }

    @Test("indirect tables are followed; malformed ones are refused")
    func indirect() throws {
        var r = try RingBuilder(size: 4)
        var q = try r.queue()
        var chain = DescriptorChain()
        try r.setDescriptor(0, address: RingBuilder.data, length: 16, flags: next, next: 2, table: RingBuilder.indirect)
        try r.setDescriptor(2, address: RingBuilder.data + 0x100, length: 1, flags: write, table: RingBuilder.indirect)
        try r.setDescriptor(0, address: RingBuilder.indirect, length: 48, flags: indirectFlag)
        try r.post(0)
        #expect(try { let popped = try q.pop(into: &chain); return popped }())
        #expect(chain.segments.map(\.length) == [16, 1])
        #expect(chain.fault == nil)
        // Indirect with NEXT.
        try r.setDescriptor(1, address: RingBuilder.indirect, length: 48, flags: indirectFlag | next, next: 0)
        try r.post(1)
        #expect(throws: VirtqueueError.indirectWithNext(head: 1)) { try q.pop(into: &chain) }
        // Length not a multiple of 16.
        try r.setDescriptor(1, address: RingBuilder.indirect, length: 40, flags: indirectFlag)
        try r.post(1)
        #expect(throws: VirtqueueError.indirectTableSize(address: RingBuilder.indirect, length: 40)) { try q.pop(into: &chain) }
        // Table outside RAM.
        try r.setDescriptor(1, address: 1 << 40, length: 32, flags: indirectFlag)
        try r.post(1)
        #expect(throws: VirtqueueError.indirectTableOutsideRAM(address: 1 << 40, length: 32)) { try q.pop(into: &chain) }
        // An indirect descriptor inside the table.
        try r.setDescriptor(0, address: RingBuilder.indirect, length: 16, flags: indirectFlag, table: RingBuilder.indirect)
        try r.setDescriptor(1, address: RingBuilder.indirect, length: 16, flags: indirectFlag)
        try r.post(1)
        #expect(throws: VirtqueueError.nestedIndirect(head: 1)) { try q.pop(into: &chain) }
        // A loop inside the table.
        try r.setDescriptor(0, address: RingBuilder.data, length: 1, flags: next, next: 1, table: RingBuilder.indirect)
        try r.setDescriptor(1, address: RingBuilder.data, length: 1, flags: next, next: 0, table: RingBuilder.indirect)
        try r.setDescriptor(1, address: RingBuilder.indirect, length: 32, flags: indirectFlag)
        try r.post(1)
        #expect(throws: VirtqueueError.chainTooLong(head: 1, limit: 2)) { try q.pop(into: &chain) }
    }

    @Test("queue sizes that are not powers of two, and rings outside RAM, are refused at enable",
          arguments: [0, 3, 6, 100, 32769, 65535] as [UInt16])
    func badSizes(size: UInt16) throws {
        let r = try RingBuilder(size: 4)
        var q = Virtqueue(index: 0, memory: r.memory)
        #expect(throws: VirtqueueError.badQueueSize(size)) {
            try q.activate(size: size, descriptors: RingBuilder.desc, driverArea: RingBuilder.avail,
                           deviceArea: RingBuilder.used, eventIndex: false)
        }
        #expect(!q.isActive)
    }

    @Test("rings outside RAM, misaligned, or a used ring in read-only memory")
    func badRings() throws {
        let r = try RingBuilder(size: 4)
        var q = Virtqueue(index: 0, memory: r.memory)
        #expect(throws: VirtqueueError.ringOutsideRAM("descriptor table", address: 1 << 40, bytes: 64)) {
            try q.activate(size: 4, descriptors: 1 << 40, driverArea: RingBuilder.avail, deviceArea: RingBuilder.used, eventIndex: false)
        }
        #expect(throws: VirtqueueError.ringOutsideRAM("used ring", address: 0x2000, bytes: 38)) {
            try q.activate(size: 4, descriptors: RingBuilder.desc, driverArea: RingBuilder.avail, deviceArea: 0x2000, eventIndex: false)
        }
        #expect(throws: VirtqueueError.misaligned("descriptor table", address: RingBuilder.desc + 8)) {
            try q.activate(size: 4, descriptors: RingBuilder.desc + 8, driverArea: RingBuilder.avail, deviceArea: RingBuilder.used, eventIndex: false)
        }
        // The ring's last bytes beyond the end of RAM.
        #expect(throws: VirtqueueError.ringOutsideRAM("available ring", address: (4 << 20) - 8, bytes: 14)) {
            try q.activate(size: 4, descriptors: RingBuilder.desc, driverArea: (4 << 20) - 8, deviceArea: RingBuilder.used, eventIndex: false)
        }
        #expect(!q.isActive)
    }

    @Test("avail idx running more than a queue ahead is refused")
    func availJump() throws {
        let r = try RingBuilder(size: 4)
        var q = try r.queue()
        try r.setAvailIdx(5)
        var chain = DescriptorChain()
        #expect(throws: VirtqueueError.availIndexJump(avail: 5, lastSeen: 0, size: 4)) { try q.pop(into: &chain) }
    }

    @Test("without EVENT_IDX: interrupt unless NO_INTERRUPT, and only when something was used")
    func noInterruptFlag() throws {
        var r = try RingBuilder(size: 4)
        var q = try r.queue()
        #expect(!{ let wants = q.needsInterrupt(); return wants }())
        try r.setDescriptor(0, address: RingBuilder.data, length: 1, flags: write)
        try r.post(0)
        var chain = DescriptorChain()
        _ = try q.pop(into: &chain)
        q.push(head: 0, written: 1)
        #expect({ let wants = q.needsInterrupt(); return wants }())
        try r.setAvailFlags(1)
        try r.post(0)
        _ = try q.pop(into: &chain)
        q.push(head: 0, written: 1)
        #expect(!{ let wants = q.needsInterrupt(); return wants }())
    }

    @Test("EVENT_IDX: used_event decides interrupts, avail_event is published for kicks")
    func eventIndex() throws {
        var r = try RingBuilder(size: 8)
        var q = try r.queue(eventIndex: true)
        try r.setDescriptor(0, address: RingBuilder.data, length: 1, flags: write)
        var chain = DescriptorChain()
        // The driver wants an interrupt once used idx passes 2 (used_event = 2).
        try r.setUsedEvent(2)
        for _ in 0..<2 {
            try r.post(0)
            _ = try q.pop(into: &chain)
            q.push(head: 0, written: 1)
        }
        #expect(!{ let wants = q.needsInterrupt(); return wants }())                // used idx 2: not past used_event yet
        try r.post(0)
        _ = try q.pop(into: &chain)
        q.push(head: 0, written: 1)
        #expect({ let wants = q.needsInterrupt(); return wants }())                 // used idx 3 > 2
        #expect(!q.enableNotifications())
        #expect(r.availEvent == 3)
        try r.post(0)
        #expect(q.enableNotifications())            // arrived meanwhile: the caller must loop
    }

    @Test("unpop gives chains back; reset forgets the rings")
    func unpopAndReset() throws {
        var r = try RingBuilder(size: 4)
        var q = try r.queue()
        try r.setDescriptor(0, address: RingBuilder.data, length: 1, flags: write)
        try r.post(0)
        var chain = DescriptorChain()
        #expect(try { let popped = try q.pop(into: &chain); return popped }())
        q.unpop(1)
        #expect(try { let popped = try q.pop(into: &chain); return popped }())
        q.reset()
        #expect(!q.isActive && !q.hasAvailable)
        #expect(try !{ let popped = try q.pop(into: &chain); return popped }())
    }

    @Test("random garbage rings: every chain either throws or yields buffers wholly inside guest RAM")
    func randomRings() throws {
        var rng = SeededRandom(seed: 0x5356_4D4D)   // fixed seed: a failure is reproducible
        var r = try RingBuilder(size: 16)
        let ramEnd = r.memory.size
        var q = try r.queue()
        var chain = DescriptorChain()
        var taken = 0, refused = 0
        for _ in 0..<2000 {
            for i in 0..<16 {
                // Addresses near RAM's edges, inside, far outside; lengths small, large, absurd.
                let address: UInt64 = [UInt64.random(in: 0..<ramEnd, using: &rng), ramEnd - UInt64.random(in: 0...64, using: &rng),
                                       UInt64.random(in: 0...UInt64.max, using: &rng), RingBuilder.indirect][Int.random(in: 0..<4, using: &rng)]
                let length: UInt32 = [UInt32.random(in: 0...64, using: &rng), UInt32.random(in: 0...UInt32.max, using: &rng),
                                      16 * UInt32.random(in: 0...20, using: &rng)][Int.random(in: 0..<3, using: &rng)]
                try r.setDescriptor(i, address: address, length: length, flags: UInt16.random(in: 0...7, using: &rng),
                                    next: UInt16.random(in: 0...20, using: &rng))
                try r.setDescriptor(i, address: address, length: length, flags: UInt16.random(in: 0...7, using: &rng),
                                    next: UInt16.random(in: 0...20, using: &rng), table: RingBuilder.indirect)
            }
            try r.post(UInt16.random(in: 0...17, using: &rng))
            do {
                guard try q.pop(into: &chain) else { continue }
                taken += 1
                for s in chain.segments {
                    if let p = s.pointer {
                        // The host pointer covers exactly [address, address+length) of RAM.
                        #expect(r.memory.pointer(s.address, count: UInt64(s.length)) == p)
                        #expect(s.address + UInt64(s.length) <= ramEnd)
                    } else {
                        #expect(chain.fault != nil)
                    }
                }
                q.push(head: chain.head, written: 0)
            } catch {
                refused += 1
                #expect(error.needsReset)
                // A real device stops the queue here; the test starts it again.
                try q.activate(size: 16, descriptors: RingBuilder.desc, driverArea: RingBuilder.avail,
                               deviceArea: RingBuilder.used, eventIndex: false)
                r = try RingBuilder(memory: r.memory, size: 16)
            }
        }
        #expect(taken > 100 && refused > 100, "taken \(taken), refused \(refused)")
    }
}
