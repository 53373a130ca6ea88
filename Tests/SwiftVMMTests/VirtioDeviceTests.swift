import Backends
import Devices
import Foundation
import Memory
import Testing

/// A virtio device behind its PCI transport, driven the way a driver does (BAR 0 register
/// writes, rings in a real GuestMemory), without KVM: requests are served with `processNow`.
///
/// `start` sets up one queue on `ring`; `start(features:queues:)` sets up several, queue q on
/// `rings[q]` (at `RingBuilder.base(forQueue:)`).
final class VirtioHarness {
    let memory: GuestMemory
    let transport: VirtioPCI
    /// The rings the driver set up; `ring` is the first (the only one after `start`).
    var rings: [RingBuilder]
    var ring: RingBuilder {
        get { rings[0] }
        set { rings[0] = newValue }
    }
    /// Where `submit` writes its next descriptors, per ring.
    var nextDescriptors: [Int]
    var nextDescriptor: Int {
        get { nextDescriptors[0] }
        set { nextDescriptors[0] = newValue }
    }
    let queueSize: UInt16

    // virtio_pci_common_cfg offsets.
    static let deviceFeatureSelect: UInt64 = 0, deviceFeature: UInt64 = 4, driverFeatureSelect: UInt64 = 8
    static let driverFeature: UInt64 = 12, status: UInt64 = 20, queueSelect: UInt64 = 22, queueSize: UInt64 = 24
    static let queueVector: UInt64 = 26, queueEnable: UInt64 = 28, queueDesc: UInt64 = 32
    static let queueDriver: UInt64 = 40, queueDevice: UInt64 = 48

    let interrupts: RecordingInterrupts

    init(_ device: any VirtioDeviceModel, queueSize: UInt16 = 8, interrupts: RecordingInterrupts = RecordingInterrupts()) throws {
        let first = try RingBuilder(size: queueSize)
        rings = [first]
        nextDescriptors = [0]
        self.queueSize = queueSize
        memory = first.memory
        self.interrupts = interrupts
        // No device thread here: requests are served with processNow.
        transport = try VirtioPCI(device: device, memory: memory, interrupts: interrupts,
                                  intx: SharedLines(sink: interrupts), intxLine: 10, doorbells: interrupts)
    }

    func read(_ offset: UInt64, _ size: Int) -> UInt64 { transport.barRead(0, offset: offset, size: size) }
    func write(_ offset: UInt64, _ size: Int, _ value: UInt64) { transport.barWrite(0, offset: offset, size: size, value: value) }

    var deviceFeatures: UInt64 {
        write(Self.deviceFeatureSelect, 4, 0)
        let lo = read(Self.deviceFeature, 4)
        write(Self.deviceFeatureSelect, 4, 1)
        return lo | read(Self.deviceFeature, 4) << 32
    }

    /// Reset, negotiate `features`, set up queue `queue` at the RingBuilder's addresses, DRIVER_OK.
    func start(features: UInt64, queue: UInt16 = 0, size: UInt16? = nil, featuresOK: Bool = true) {
        negotiate(features, featuresOK: featuresOK)
        enable(queue: Int(queue), on: ring, size: size ?? ring.size)
        write(Self.status, 1, featuresOK ? 15 : 7)
    }

    /// Reset, negotiate `features`, set up queues 0..<count each on fresh rings of its own
    /// (`rings[q]`), DRIVER_OK.
    func start(features: UInt64, queues count: Int) throws {
        negotiate(features, featuresOK: true)
        rings = try (0..<count).map { try RingBuilder(memory: memory, size: queueSize, base: RingBuilder.base(forQueue: $0)) }
        nextDescriptors = Array(repeating: 0, count: count)
        for q in 0..<count { enable(queue: q, on: rings[q], size: queueSize) }
        write(Self.status, 1, 15)
    }

    private func negotiate(_ features: UInt64, featuresOK: Bool) {
        write(Self.status, 1, 0)
        write(Self.status, 1, 1)
        write(Self.status, 1, 3)
        write(Self.driverFeatureSelect, 4, 0)
        write(Self.driverFeature, 4, features & 0xFFFF_FFFF)
        write(Self.driverFeatureSelect, 4, 1)
        write(Self.driverFeature, 4, features >> 32)
        if featuresOK { write(Self.status, 1, 11) }
    }

    private func enable(queue: Int, on r: RingBuilder, size: UInt16) {
        write(Self.queueSelect, 2, UInt64(queue))
        write(Self.queueSize, 2, UInt64(size))
        write(Self.queueDesc, 8, r.descAddress)
        write(Self.queueDriver, 4, r.availAddress & 0xFFFF_FFFF)      // 64-bit field as two halves
        write(Self.queueDriver + 4, 4, r.availAddress >> 32)
        write(Self.queueDevice, 8, r.usedAddress)
        write(Self.queueEnable, 2, 1)
    }

    var status: UInt8 { UInt8(read(Self.status, 1)) }

    /// Post a chain of (address, length, writable) buffers on queue `queue` (on `rings[queue]`
    /// after `start(features:queues:)`, else on `ring`) without serving it; returns its head.
    @discardableResult
    func post(_ buffers: [(UInt64, UInt32, Bool)], queue: Int = 0) throws -> UInt16 {
        let r = rings.count > 1 ? queue : 0
        let first = nextDescriptors[r]
        for (i, b) in buffers.enumerated() {
            let index = (first + i) % Int(rings[r].size)
            let more = i < buffers.count - 1
            try rings[r].setDescriptor(index, address: b.0, length: b.1, flags: (more ? 1 : 0) | (b.2 ? 2 : 0),
                                       next: UInt16((index + 1) % Int(rings[r].size)))
        }
        nextDescriptors[r] = (first + buffers.count) % Int(rings[r].size)
        try rings[r].post(UInt16(first))
        return UInt16(first)
    }

    /// Post a chain of (address, length, writable) buffers and let the device serve it.
    /// Returns the used element's length, or nil if nothing was used.
    @discardableResult
    func submit(_ buffers: [(UInt64, UInt32, Bool)], queue: Int = 0) throws -> UInt32? {
        let r = rings.count > 1 ? queue : 0
        let before = rings[r].usedIdx
        try post(buffers, queue: queue)
        transport.processNow(queue)
        guard rings[r].usedIdx != before else { return nil }
        return rings[r].usedElement(Int(before % rings[r].size)).length
    }
}

/// A raw image filled with the guest's read pattern P(s, i) = (i + 31*s + s/256) mod 256.
func makeImage(sectors: Int) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvmm-\(UUID().uuidString).img")
    var data = Data(capacity: sectors * 512)
    for s in 0..<sectors { for i in 0..<512 { data.append(UInt8((i + 31 * s + s / 256) % 256)) } }
    try data.write(to: url)
    return url
}

@Suite("virtio PCI transport and devices")
struct VirtioDeviceTests {
    static let header: UInt64 = 0x30000, data: UInt64 = 0x31000, statusByte: UInt64 = 0x33000

    func blockHarness(sectors: Int = 16, readOnly: Bool = false) throws -> (VirtioHarness, VirtioBlock, URL) {
        let url = try makeImage(sectors: sectors)
        let blk = try VirtioBlock(path: url.path, readOnly: readOnly, index: 0, trace: [])
        let h = try VirtioHarness(blk)
        h.start(features: Virtio.featureVersion1 | VirtioBlock.featureFlush)
        return (h, blk, url)
    }

    func request(_ h: VirtioHarness, type: UInt32, sector: UInt64) throws {
        try h.memory.store(type, at: Self.header)
        try h.memory.store(UInt32(0), at: Self.header + 4)
        try h.memory.store(sector, at: Self.header + 8)
        try h.memory.store(UInt8(0xEE), at: Self.statusByte)
    }

    func status(_ h: VirtioHarness) -> UInt8 { h.memory.load(UInt8.self, at: Self.statusByte)! }

    @Test("PCI identity and the virtio capabilities a driver looks for")
    func identity() throws {
        let (h, _, url) = try blockHarness()
        defer { try? FileManager.default.removeItem(at: url) }
        let c = h.transport.config
        #expect(c.get16(0) == 0x1AF4 && c.get16(2) == 0x1042 && c.bytes[8] >= 1)
        #expect(c.bytes[PCIConfigSpace.interruptPin] == 1 && c.bytes[PCIConfigSpace.interruptLine] == 10)
        var types: [UInt8: (bar: UInt8, offset: UInt32, length: UInt32)] = [:]
        var sawMSIX = false
        var p = Int(c.bytes[PCIConfigSpace.capabilitiesPointer])
        while p != 0 {
            if c.bytes[p] == 0x11 { sawMSIX = true; #expect(c.get16(p + 2) & 0x7FF == 1) }   // 2 vectors
            if c.bytes[p] == 0x09 { types[c.bytes[p + 3]] = (c.bytes[p + 4], c.get32(p + 8), c.get32(p + 12)) }
            p = Int(c.bytes[p + 1])
        }
        #expect(sawMSIX)
        #expect(Set(types.keys) == [1, 2, 3, 4, 5])
        #expect(types[1]!.bar == 0 && types[1]!.length >= 56)
        #expect(types[4]!.length >= 60)
    }

    @Test("feature negotiation: VERSION_1 required, unoffered bits refused")
    func features() throws {
        let (h, _, url) = try blockHarness()
        defer { try? FileManager.default.removeItem(at: url) }
        let offered = h.deviceFeatures
        #expect(offered & Virtio.featureVersion1 != 0)
        #expect(offered & VirtioBlock.featureFlush != 0 && offered & VirtioBlock.featureSegMax != 0)
        #expect(offered & VirtioBlock.featureReadOnly == 0)
        for (features, accepted) in [(VirtioBlock.featureFlush, false), (Virtio.featureVersion1 | 1 << 40, false),
                                     (Virtio.featureVersion1, true)] {
            h.write(VirtioHarness.status, 1, 0)
            h.write(VirtioHarness.status, 1, 3)
            h.write(VirtioHarness.driverFeatureSelect, 4, 0)
            h.write(VirtioHarness.driverFeature, 4, features & 0xFFFF_FFFF)
            h.write(VirtioHarness.driverFeatureSelect, 4, 1)
            h.write(VirtioHarness.driverFeature, 4, features >> 32)
            h.write(VirtioHarness.status, 1, 11)
            #expect((h.status & 8 != 0) == accepted, "features 0x\(String(features, radix: 16))")
        }
    }

    @Test("DRIVER_OK without FEATURES_OK leaves the device inert")
    func driverOKWithoutFeatures() throws {
        let rng = VirtioRNG(trace: [])
        let h = try VirtioHarness(rng)
        h.start(features: Virtio.featureVersion1, featuresOK: false)
        #expect(rng.counters.guestErrors.load(ordering: .relaxed) == 1)
        #expect(h.transport.queueIsActive(0))                      // the queue is there, but not served
        #expect(try h.submit([(Self.data, 16, true)]) == nil)
    }

    @Test("read, write, flush and GET_ID go to the file; the status byte says OK")
    func readWrite() throws {
        let (h, blk, url) = try blockHarness()
        defer { try? FileManager.default.removeItem(at: url) }
        try request(h, type: VirtioBlock.typeIn, sector: 3)
        // Data split over two descriptors.
        #expect(try h.submit([(Self.header, 16, false), (Self.data, 200, true), (Self.data + 200, 312, true),
                              (Self.statusByte, 1, true)]) == 513)
        #expect(status(h) == VirtioBlock.statusOK)
        let sector3: [UInt8] = (0..<512).map { (i: Int) -> UInt8 in UInt8((i + 93) % 256) }
        #expect(h.memory.bytes(at: Self.data, count: 512) == sector3)
        // Write 1 KiB of 0x5A at sector 2.
        try h.memory.fill(0x5A, at: Self.data, count: 1024)
        try request(h, type: VirtioBlock.typeOut, sector: 2)
        #expect(try h.submit([(Self.header, 16, false), (Self.data, 1024, false), (Self.statusByte, 1, true)]) == 1)
        #expect(status(h) == VirtioBlock.statusOK)
        try request(h, type: VirtioBlock.typeFlush, sector: 0)
        try h.submit([(Self.header, 16, false), (Self.statusByte, 1, true)])
        #expect(status(h) == VirtioBlock.statusOK)
        let file = try Data(contentsOf: url)
        #expect(file[1024..<2048].allSatisfy { $0 == 0x5A })
        let pattern: [UInt8] = (0..<1024).map { (n: Int) -> UInt8 in UInt8((n % 512 + 31 * (n / 512)) % 256) }
        #expect([UInt8](file[0..<1024]) == pattern)
        try request(h, type: VirtioBlock.typeGetID, sector: 0)
        #expect(try h.submit([(Self.header, 16, false), (Self.data, 20, true), (Self.statusByte, 1, true)]) == 21)
        #expect(String(decoding: h.memory.bytes(at: Self.data, count: 12), as: UTF8.self) == "swiftvmm-vda")
        #expect(blk.counters.guestErrors.load(ordering: .relaxed) == 0)
    }

    @Test("requests past the end, partial sectors, wrong-way buffers, unknown types fail with the spec's status")
    func badRequests() throws {
        let (h, blk, url) = try blockHarness(sectors: 16)
        defer { try? FileManager.default.removeItem(at: url) }
        let before = try Data(contentsOf: url)
        typealias Buffers = [(UInt64, UInt32, Bool)]
        let hdr: (UInt64, UInt32, Bool) = (Self.header, 16, false), st: (UInt64, UInt32, Bool) = (Self.statusByte, 1, true)
        let inT = VirtioBlock.typeIn, outT = VirtioBlock.typeOut
        var cases: [(UInt32, UInt64, Buffers, UInt8)] = []
        cases.append((inT, 16, [hdr, (Self.data, 512, true), st], 1))                 // just past the end
        cases.append((inT, 15, [hdr, (Self.data, 1024, true), st], 1))                // runs past the end
        cases.append((inT, UInt64.max, [hdr, (Self.data, 512, true), st], 1))         // absurd sector
        cases.append((outT, 16, [hdr, (Self.data, 512, false), st], 1))
        cases.append((inT, 0, [hdr, (Self.data, 100, true), st], 1))                  // not whole sectors
        cases.append((inT, 0, [hdr, (Self.data, 512, false), st], 1))                 // read into a readable buffer
        cases.append((outT, 0, [hdr, (Self.data, 512, true), st], 1))                 // write from a writable buffer
        cases.append((inT, 0, [hdr, (1 << 40, 512, true), st], 1))                    // outside RAM
        cases.append((inT, 0, [hdr, (0x2000, 512, true), st], 1))                     // read-only RAM
        cases.append((inT, 0, [(Self.header, 8, false), st], 1))                      // short header
        cases.append((99, 0, [hdr, st], 2))                                           // unknown type: UNSUPP
        for (i, c) in cases.enumerated() {
            try request(h, type: c.0, sector: c.1)
            #expect(try h.submit(c.2) != nil, "case \(i)")
            #expect(status(h) == c.3, "case \(i)")
        }
        #expect(h.status & Virtio.statusNeedsReset == 0)
        #expect(blk.counters.guestErrors.load(ordering: .relaxed) == UInt64(cases.count - 1))
        #expect(try Data(contentsOf: url) == before)
    }

    @Test("a request without a writable status byte needs a reset; reset recovers")
    func unanswerable() throws {
        let (h, blk, url) = try blockHarness()
        defer { try? FileManager.default.removeItem(at: url) }
        try request(h, type: VirtioBlock.typeIn, sector: 0)
        #expect(try h.submit([(Self.header, 16, false), (Self.data, 512, true), (Self.statusByte, 1, false)]) == nil)
        #expect(h.status & Virtio.statusNeedsReset != 0)
        #expect(h.transport.isrStatus & 2 != 0)                    // configuration change interrupt
        #expect(blk.counters.guestErrors.load(ordering: .relaxed) == 1)
        #expect(h.read(0x800, 1) & 2 != 0)                          // ISR read returns and clears
        #expect(h.transport.isrStatus == 0)
        h.write(VirtioHarness.status, 1, 0)
        #expect(h.status == 0)
        h.ring = try RingBuilder(memory: h.memory, size: 8)
        h.nextDescriptor = 0
        h.start(features: Virtio.featureVersion1)
        #expect(h.status & Virtio.statusNeedsReset == 0)
        try request(h, type: VirtioBlock.typeIn, sector: 0)
        #expect(try h.submit([(Self.header, 16, false), (Self.data, 512, true), (Self.statusByte, 1, true)]) == 513)
        #expect(status(h) == VirtioBlock.statusOK)
    }

    @Test("read-only disks: RO offered, writes fail with IOERR, the file is untouched")
    func readOnly() throws {
        let (h, blk, url) = try blockHarness(readOnly: true)
        defer { try? FileManager.default.removeItem(at: url) }
        #expect(blk.deviceFeatures & VirtioBlock.featureReadOnly != 0)
        #expect(blk.deviceFeatures & VirtioBlock.featureDiscard == 0)
        let before = try Data(contentsOf: url)
        try h.memory.fill(0, at: Self.data, count: 512)
        try request(h, type: VirtioBlock.typeOut, sector: 1)
        try h.submit([(Self.header, 16, false), (Self.data, 512, false), (Self.statusByte, 1, true)])
        #expect(status(h) == VirtioBlock.statusIOError)
        #expect(try Data(contentsOf: url) == before)
    }

    @Test("a queue size that is not a power of two, or above the device's maximum, sets NEEDS_RESET at enable",
          arguments: [6, 512] as [UInt16])
    func badQueueSize(size: UInt16) throws {
        let url = try makeImage(sectors: 16)
        defer { try? FileManager.default.removeItem(at: url) }
        let blk = try VirtioBlock(path: url.path, readOnly: false, index: 0, trace: [])
        let h = try VirtioHarness(blk)
        h.start(features: Virtio.featureVersion1, size: size)
        #expect(h.status & Virtio.statusNeedsReset != 0)
        #expect(!h.transport.queueIsActive(0))
    }

    @Test("DISCARD and WRITE_ZEROES punch holes that read back as zeroes (where the file system can)")
    func discard() throws {
        let (h, blk, url) = try blockHarness(sectors: 64)
        defer { try? FileManager.default.removeItem(at: url) }
        guard blk.canDiscard else {
            #expect(blk.deviceFeatures & VirtioBlock.featureDiscard == 0)
            return
        }
        try request(h, type: VirtioBlock.typeWriteZeroes, sector: 0)
        try h.memory.store(UInt64(8), at: Self.data)
        try h.memory.store(UInt32(16), at: Self.data + 8)
        try h.memory.store(UInt32(0), at: Self.data + 12)
        try h.submit([(Self.header, 16, false), (Self.data, 16, false), (Self.statusByte, 1, true)])
        #expect(status(h) == VirtioBlock.statusOK)
        let file = try Data(contentsOf: url)
        #expect(file.count == 64 * 512)
        #expect(file[(8 * 512)..<(24 * 512)].allSatisfy { $0 == 0 })
        #expect(file[(7 * 512)..<(8 * 512)].contains { $0 != 0 })
        // Past the end: IOERR.
        try request(h, type: VirtioBlock.typeDiscard, sector: 0)
        try h.memory.store(UInt64(60), at: Self.data)
        try h.memory.store(UInt32(8), at: Self.data + 8)
        try h.submit([(Self.header, 16, false), (Self.data, 16, false), (Self.statusByte, 1, true)])
        #expect(status(h) == VirtioBlock.statusIOError)
    }

    @Test("a missing block image is a clear error")
    func missingImage() {
        #expect(throws: FileBlockBackend.OpenError.self) {
            try VirtioBlock(path: "/nonexistent/disk.img", readOnly: false, index: 0, trace: [])
        }
        #expect(throws: FileBlockBackend.OpenError.self) {
            try VirtioBlock(path: "/tmp", readOnly: true, index: 0, trace: [])
        }
    }

    @Test("virtio-rng fills every writable buffer with random bytes")
    func rng() throws {
        let rng = VirtioRNG(trace: [])
        let h = try VirtioHarness(rng)
        h.start(features: Virtio.featureVersion1)
        try h.memory.fill(0, at: Self.data, count: 128)
        #expect(try h.submit([(Self.data, 64, true), (Self.data + 64, 64, true)]) == 128)
        #expect(h.memory.bytes(at: Self.data, count: 128).contains { $0 != 0 })
        // A buffer outside RAM: nothing written, counted.
        #expect(try h.submit([(1 << 40, 64, true)]) == 0)
        #expect(rng.counters.guestErrors.load(ordering: .relaxed) == 1)
    }

    @Test("MSI-X table and PCI-config-access window through BAR 0 and config space")
    func msixThroughBAR() throws {
        let rng = VirtioRNG(trace: [])
        let h = try VirtioHarness(rng)
        h.write(VirtioPCI.msixTableOffset, 4, 0xFEE0_0000)
        h.write(VirtioPCI.msixTableOffset + 8, 4, 0x31)
        #expect(h.read(VirtioPCI.msixTableOffset + 8, 4) == 0x31)
        #expect(h.read(VirtioPCI.msixTableOffset + 12, 4) == 1)                     // masked
        #expect(h.transport.msixTable.entries[0].data == 0x31)
        // Queue vector register.
        h.write(VirtioHarness.queueSelect, 2, 0)
        h.write(VirtioHarness.queueVector, 2, 0)
        #expect(h.read(VirtioHarness.queueVector, 2) == 0)
        h.write(VirtioHarness.queueSelect, 2, 5)                                    // no such queue
        #expect(h.read(VirtioHarness.queueSize, 2) == 0)
        // virtio_pci_cfg_cap: select BAR 0, offset 20 (device_status), 1 byte; access pci_cfg_data.
        let c = h.transport.config
        var p = Int(c.bytes[PCIConfigSpace.capabilitiesPointer])
        while p != 0 && !(c.bytes[p] == 0x09 && c.bytes[p + 3] == 5) { p = Int(c.bytes[p + 1]) }
        #expect(p != 0)
        h.transport.configWrite(offset: p + 4, size: 1, value: 0)
        h.transport.configWrite(offset: p + 8, size: 4, value: 20)
        h.transport.configWrite(offset: p + 12, size: 4, value: 1)
        h.transport.configWrite(offset: p + 16, size: 4, value: 1)                 // ACKNOWLEDGE
        #expect(h.status == 1)
        #expect(h.transport.configRead(offset: p + 16, size: 4) == 1)
    }

    @Test("virtio-net MACs: parsed strictly, generated stable and locally administered")
    func macs() {
        #expect(VirtioNet.parseMAC("52:54:00:12:34:56") == [0x52, 0x54, 0, 0x12, 0x34, 0x56])
        #expect(VirtioNet.parseMAC("01:00:00:00:00:00") == nil)          // multicast
        #expect(VirtioNet.parseMAC("52:54:00:12:34") == nil)
        #expect(VirtioNet.parseMAC("52:54:00:12:34:5g") == nil)
        let a = VirtioNet.generatedMAC(for: "tap0"), b = VirtioNet.generatedMAC(for: "tap1")
        #expect(a == VirtioNet.generatedMAC(for: "tap0") && a != b)
        #expect(a[0] & 0x02 != 0 && a[0] & 0x01 == 0)
    }
}
