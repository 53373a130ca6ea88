import Backends
import Devices
import Foundation
import Glibc
import HostSupport
import Memory
import Synchronization
import Testing

/// A disk in memory that fails on request, the way disks fail: the seam a test puts between
/// virtio-blk and its storage.
final class FaultyDisk: BlockBackend {
    struct Faults {
        var read: Int32? = nil
        var write: Int32? = nil
        var flush: Int32? = nil
        var discard: Int32? = nil
        var flushes = 0
    }
    let path = "faulty-disk"
    let size: UInt64
    let isReadOnly = false
    let canDiscard = true
    let faults = Mutex(Faults())
    let bytes: Mutex<[UInt8]>

    init(sectors: Int) {
        size = UInt64(sectors) * 512
        bytes = Mutex([UInt8](repeating: 0x11, count: sectors * 512))
    }

    func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws(BlockIOError) {
        if let e = faults.withLock({ $0.read }) { throw BlockIOError(errno: e) }
        bytes.withLock { b in b.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress! + Int(offset), byteCount: count) } }
    }

    func write(from buffer: UnsafeRawPointer, count: Int, at offset: UInt64) throws(BlockIOError) {
        if let e = faults.withLock({ $0.write }) { throw BlockIOError(errno: e) }
        bytes.withLock { b in b.withUnsafeMutableBytes { ($0.baseAddress! + Int(offset)).copyMemory(from: buffer, byteCount: count) } }
    }

    func flush() throws(BlockIOError) {
        try faults.withLock { f throws(BlockIOError) in
            f.flushes += 1
            if let e = f.flush { throw BlockIOError(errno: e) }
        }
    }

    func discard(at offset: UInt64, count: UInt64) throws(BlockIOError) {
        if let e = faults.withLock({ $0.discard }) { throw BlockIOError(errno: e) }
        bytes.withLock { b in for i in Int(offset)..<Int(offset + count) { b[i] = 0 } }
    }
}

@Suite("device seams: the common configuration alone, block backends, doorbells, shared lines")
struct VirtioSeamTests {
    static let header: UInt64 = 0x30000, data: UInt64 = 0x31000, statusByte: UInt64 = 0x33000

    @Test("the common configuration as plain state: feature gate, queue fields locked while enabled, the effects")
    func commonConfig() {
        var c = VirtioCommonConfig(offeredFeatures: Virtio.featureVersion1 | 1 << 9, queueCount: 2, queueMaxSize: 128)
        #expect(c.read(offset: 18, size: 2) == 2)                            // num_queues
        #expect(c.write(offset: 20, size: 1, value: 1).effect == .none)
        // Features as two halves; an unoffered bit makes FEATURES_OK not stick.
        _ = c.write(offset: 8, size: 4, value: 0)
        _ = c.write(offset: 12, size: 4, value: 1 << 9 | 1 << 3)
        _ = c.write(offset: 8, size: 4, value: 1)
        _ = c.write(offset: 12, size: 4, value: 1)
        let refused = c.write(offset: 20, size: 1, value: 11)
        #expect(refused.effect == .none && refused.guestError != nil && c.status & Virtio.statusFeaturesOK == 0)
        _ = c.write(offset: 8, size: 4, value: 0)
        _ = c.write(offset: 12, size: 4, value: 1 << 9)
        #expect(c.write(offset: 20, size: 1, value: 11).guestError == nil && c.status & Virtio.statusFeaturesOK != 0)
        // Queue 1: size, rings as 64-bit halves, then enable: the transport is asked to activate it.
        _ = c.write(offset: 22, size: 2, value: 1)
        _ = c.write(offset: 24, size: 2, value: 64)
        _ = c.write(offset: 32, size: 4, value: 0x1000)
        _ = c.write(offset: 36, size: 4, value: 0x1)
        let enable = c.write(offset: 28, size: 2, value: 1)
        var q = VirtioCommonConfig.Queue(size: 64)
        q.enabled = true
        q.descriptors = 0x1_0000_1000
        #expect(enable.effect == .enableQueue(1, q, eventIndex: false))
        // Enabled: its fields no longer change.
        _ = c.write(offset: 24, size: 2, value: 8)
        #expect(c.read(offset: 24, size: 2) == 64)
        #expect(c.write(offset: 20, size: 1, value: 15).effect == .start(features: 1 << 9 | Virtio.featureVersion1))
        #expect(c.isRunning)
        c.setNeedsReset()
        #expect(!c.isRunning && c.read(offset: 20, size: 1) & UInt64(Virtio.statusNeedsReset) != 0)
        // A vector the MSI-X table does not have reads back as NO_VECTOR (the driver then falls
        // back); one it has sticks.
        _ = c.write(offset: 26, size: 2, value: 0x55)
        #expect(c.read(offset: 26, size: 2) == 0xFFFF)
        _ = c.write(offset: 16, size: 2, value: 2)
        #expect(c.read(offset: 16, size: 2) == 2)
        _ = c.write(offset: 16, size: 2, value: 3)
        #expect(c.read(offset: 16, size: 2) == 0xFFFF)
        #expect(c.write(offset: 20, size: 1, value: 0).effect == .reset)
        #expect(c.status == 0 && c.queues[1] == VirtioCommonConfig.Queue(size: 128))
    }

    func start(_ disk: FaultyDisk, flush: Bool = true) throws -> (VirtioHarness, VirtioBlock) {
        let blk = VirtioBlock(backend: disk, index: 0, trace: [])
        let h = try VirtioHarness(blk)
        h.start(features: Virtio.featureVersion1 | (flush ? VirtioBlock.featureFlush : 0))
        return (h, blk)
    }

    func request(_ h: VirtioHarness, _ type: UInt32, sector: UInt64, _ data: [(UInt64, UInt32, Bool)]) throws -> UInt8 {
        try h.memory.store(type, at: Self.header)
        try h.memory.store(UInt32(0), at: Self.header + 4)
        try h.memory.store(sector, at: Self.header + 8)
        try h.memory.store(UInt8(0xEE), at: Self.statusByte)
        try h.submit([(Self.header, 16, false)] + data + [(Self.statusByte, 1, true)])
        return h.memory.load(UInt8.self, at: Self.statusByte)!
    }

    @Test("a backend's EIO, ENOSPC and failing flush reach the driver as IOERR and are counted; nothing else changes")
    func backendFailures() throws {
        let disk = FaultyDisk(sectors: 8)
        let (h, blk) = try start(disk)
        #expect(try request(h, VirtioBlock.typeIn, sector: 1, [(Self.data, 512, true)]) == VirtioBlock.statusOK)
        disk.faults.withLock { $0.read = EIO }
        #expect(try request(h, VirtioBlock.typeIn, sector: 1, [(Self.data, 512, true)]) == VirtioBlock.statusIOError)
        disk.faults.withLock { $0 = FaultyDisk.Faults(write: ENOSPC) }
        try h.memory.fill(0x77, at: Self.data, count: 512)
        #expect(try request(h, VirtioBlock.typeOut, sector: 2, [(Self.data, 512, false)]) == VirtioBlock.statusIOError)
        #expect(disk.bytes.withLock { $0[1024] } == 0x11)
        disk.faults.withLock { $0 = FaultyDisk.Faults(discard: EIO) }
        try h.memory.store(UInt64(0), at: Self.data)
        try h.memory.store(UInt32(1), at: Self.data + 8)
        try h.memory.store(UInt32(0), at: Self.data + 12)
        #expect(try request(h, VirtioBlock.typeDiscard, sector: 0, [(Self.data, 16, false)]) == VirtioBlock.statusIOError)
        #expect(blk.ioErrors.load(ordering: .relaxed) == 3)
        // Host failures are not the guest's: the device is still running, no guest error counted.
        #expect(blk.counters.guestErrors.load(ordering: .relaxed) == 0)
        #expect(h.status & Virtio.statusNeedsReset == 0)
        disk.faults.withLock { $0 = FaultyDisk.Faults() }
        try h.memory.fill(0x77, at: Self.data, count: 512)
        #expect(try request(h, VirtioBlock.typeOut, sector: 2, [(Self.data, 512, false)]) == VirtioBlock.statusOK)
        #expect(disk.bytes.withLock { $0[1024] } == 0x77)
    }

    @Test("a failed flush sticks: every later flush and write of the disk fails, reads still work (lost data is never reported saved)")
    func stickyFlushFailure() throws {
        let disk = FaultyDisk(sectors: 8)
        let (h, blk) = try start(disk)
        try h.memory.fill(0x33, at: Self.data, count: 512)
        #expect(try request(h, VirtioBlock.typeOut, sector: 0, [(Self.data, 512, false)]) == VirtioBlock.statusOK)
        disk.faults.withLock { $0.flush = EIO }
        #expect(try request(h, VirtioBlock.typeFlush, sector: 0, []) == VirtioBlock.statusIOError)
        disk.faults.withLock { $0.flush = nil }                     // the disk "recovers": too late
        #expect(try request(h, VirtioBlock.typeFlush, sector: 0, []) == VirtioBlock.statusIOError)
        #expect(try request(h, VirtioBlock.typeOut, sector: 1, [(Self.data, 512, false)]) == VirtioBlock.statusIOError)
        #expect(disk.bytes.withLock { $0[512] } == 0x11)              // that write never reached the disk
        #expect(try request(h, VirtioBlock.typeIn, sector: 0, [(Self.data, 512, true)]) == VirtioBlock.statusOK)
        #expect(blk.flushFailed.load(ordering: .relaxed) && blk.ioErrors.load(ordering: .relaxed) == 1)
        // A driver reset does not forget it either.
        h.start(features: Virtio.featureVersion1 | VirtioBlock.featureFlush)
        #expect(try request(h, VirtioBlock.typeFlush, sector: 0, []) == VirtioBlock.statusIOError)
    }

    @Test("a driver without FLUSH gets write-through: every write is flushed before it completes, and a failed flush fails the write")
    func writeThrough() throws {
        let disk = FaultyDisk(sectors: 8)
        let (h, _) = try start(disk, flush: false)
        try h.memory.fill(0x42, at: Self.data, count: 512)
        #expect(try request(h, VirtioBlock.typeOut, sector: 0, [(Self.data, 512, false)]) == VirtioBlock.statusOK)
        #expect(disk.faults.withLock { $0.flushes } == 1)
        disk.faults.withLock { $0.flush = EIO }
        #expect(try request(h, VirtioBlock.typeOut, sector: 0, [(Self.data, 512, false)]) == VirtioBlock.statusIOError)
    }

    @Test("ENOSPC for real: a write past what a full tmpfs can hold fails with IOERR")
    func realENOSPC() throws {
        let dir = "/tmp/swiftvmm-enospc-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { _ = umount(dir); try? FileManager.default.removeItem(atPath: dir) }
        guard mount("tmpfs", dir, "tmpfs", 0, "size=64k") == 0 else {
            Issue.record("cannot mount a tmpfs at \(dir) (errno \(errno)): this test needs root")
            return
        }
        let image = dir + "/disk.img"
        // A sparse 1 MiB image on a 64 KiB file system: writes stop fitting after 64 KiB.
        let fd = open(image, O_RDWR | O_CREAT, 0o644)
        #expect(ftruncate(fd, 1 << 20) == 0)
        close(fd)
        let blk = try VirtioBlock(path: image, readOnly: false, index: 0, trace: [])
        let h = try VirtioHarness(blk)
        h.start(features: Virtio.featureVersion1 | VirtioBlock.featureFlush)
        try h.memory.fill(0x5A, at: Self.data, count: 64 << 10)
        var statuses: [UInt8] = []
        for chunk in 0..<4 {
            statuses.append(try request(h, VirtioBlock.typeOut, sector: UInt64(chunk * 128), [(Self.data, 64 << 10, false)]))
        }
        #expect(statuses.contains(VirtioBlock.statusIOError), "\(statuses)")
        #expect(blk.ioErrors.load(ordering: .relaxed) >= 1)
    }

    @Test("doorbells follow BAR 0; a registrar that refuses leaves nothing attached and kicks still arrive as MMIO")
    func doorbells() throws {
        let memory = try GuestMemory(size: 4 << 20)
        let sink = RecordingInterrupts()
        let transport = try VirtioPCI(device: VirtioRNG(trace: []), memory: memory, interrupts: sink,
                                      intx: SharedLines(sink: sink), intxLine: 10, doorbells: sink)
        transport.barMoved(0, to: 0xC000_0000)
        #expect(sink.doorbellAddresses == [0xC000_2000])
        transport.barMoved(0, to: 0xC000_4000)
        #expect(sink.doorbellAddresses == [0xC000_6000])
        transport.barMoved(0, to: nil)
        #expect(sink.doorbellAddresses.isEmpty)

        let refusing = RecordingInterrupts(refuseDoorbells: true)
        let h = try VirtioHarness(VirtioRNG(trace: []), interrupts: refusing)
        h.transport.barMoved(0, to: 0xC000_0000)
        #expect(refusing.doorbellAddresses.isEmpty)
        h.write(VirtioPCI.notifyOffset, 2, 0)                       // the kick, as an MMIO write
        #expect(h.transport.pendingKick(0))
    }

    @Test("queue enable racing a reset from another vCPU, with the device thread serving: each is one step, so a reset never leaves a queue live")
    func enableRacesReset() throws {
        let h = try VirtioHarness(VirtioRNG(trace: []))
        h.start(features: Virtio.featureVersion1)
        let stop = EventFD()
        let device = h.transport.start(stopFD: stop.fd)
        let transport = h.transport
        let rounds = 20_000
        // vCPU 1 sets queue 0 up and enables it, over and over; vCPU 2 resets the device.
        let enabler = HostThread.start(name: "enabler") {
            for _ in 0..<rounds {
                transport.barWrite(0, offset: VirtioHarness.queueSelect, size: 2, value: 0)
                transport.barWrite(0, offset: VirtioHarness.queueSize, size: 2, value: 8)
                transport.barWrite(0, offset: VirtioHarness.queueDesc, size: 8, value: RingBuilder.desc)
                transport.barWrite(0, offset: VirtioHarness.queueDriver, size: 8, value: RingBuilder.avail)
                transport.barWrite(0, offset: VirtioHarness.queueDevice, size: 8, value: RingBuilder.used)
                transport.barWrite(0, offset: VirtioHarness.queueEnable, size: 2, value: 1)
            }
        }
        var disagreements = 0, liveAfterReset = 0
        for _ in 0..<rounds {
            transport.barWrite(0, offset: VirtioHarness.status, size: 1, value: 0)
            let q = transport.queueState(0)
            if q.enabled != q.active { disagreements += 1 }
            if q.active && !q.enabled { liveAfterReset += 1 }
        }
        enabler.join()
        transport.barWrite(0, offset: VirtioHarness.status, size: 1, value: 0)
        let last = transport.queueState(0)
        stop.signal()
        device.join()
        #expect(disagreements == 0, "queue_enable and the served ring disagreed \(disagreements) times")
        #expect(liveAfterReset == 0, "a queue stayed live after a reset \(liveAfterReset) times")
        #expect(!last.enabled && !last.active)
    }

    @Test("INTx lines are wired-OR: high while any function holds them, one change each way at the sink")
    func sharedLines() {
        let sink = RecordingInterrupts()
        let lines = SharedLines(sink: sink)
        lines.change(10, high: true)
        lines.change(10, high: true)
        lines.change(10, high: false)
        #expect(lines.isHigh(10) && sink.isHigh(10))
        lines.change(10, high: false)
        #expect(!lines.isHigh(10) && !sink.isHigh(10))
        #expect(sink.state.withLock { $0.lineChanges } == 2)
        lines.change(11, high: false)                               // a release with nothing held: no change
        #expect(sink.state.withLock { $0.lineChanges } == 2)
    }
}
