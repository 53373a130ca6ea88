import Backends
import Devices
import Foundation
import Glibc
import HostSupport
import Memory
import Synchronization
import Testing

/// A vhost-user back-end in this process, on the other end of a socketpair: it answers the
/// front-end's requests as libvhost-user does, maps guest RAM from the memory file it is
/// sent, and serves ring 0 by filling each chain's writable buffers with `pattern` and
/// signalling the call eventfd. What it was told is kept for the tests to check.
final class InProcessBackend: @unchecked Sendable {
    static let pattern = Array("served by the back-end".utf8)

    struct Mapping: @unchecked Sendable { var guest: UInt64, size: UInt64, user: UInt64, host: UnsafeMutableRawPointer }
    struct Ring { var size: UInt32 = 0, desc: UInt64 = 0, avail: UInt64 = 0, used: UInt64 = 0
                  var kick: Int32 = -1, call: Int32 = -1, enabled = false, lastAvail: UInt16 = 0 }
    struct Seen {
        var requests: [UInt32] = []
        var features: UInt64 = 0
        var protocolFeatures: UInt64 = 0
        var mappings: [Mapping] = []
        var rings: [Int: Ring] = [:]
        var vringBaseAsked: [UInt32] = []
    }
    let seen = Mutex(Seen())
    let socket: Int32
    /// Refuse this request with REPLY_ACK status 1; never answer that one.
    let refuse: UInt32?
    let silentOn: UInt32?
    private let stopEvent = EventFD()
    private var thread: HostThread?

    init(socket: Int32, refuse: UInt32? = nil, silentOn: UInt32? = nil) {
        self.socket = socket
        self.refuse = refuse
        self.silentOn = silentOn
        thread = HostThread.start(name: "vu-backend") { [self] in loop() }
    }

    func stop() {
        stopEvent.signal()
        _ = thread?.join(until: monotonicNanoseconds() + 2_000_000_000)
    }

    private func loop() {
        while true {
            var fds = [pollfd(fd: stopEvent.fd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: socket, events: Int16(POLLIN), revents: 0)]
            let kick = seen.withLock { $0.rings[0]?.kick ?? -1 }
            fds.append(pollfd(fd: kick, events: Int16(POLLIN), revents: 0))
            guard poll(&fds, 3, 1000) >= 0 else { return }
            if fds[0].revents != 0 { return }
            if fds[1].revents != 0 { if !handleMessage() { return } }
            if fds[2].revents != 0 {
                var v: UInt64 = 0
                _ = read(kick, &v, 8)
                serveRing0()
            }
        }
    }

    /// One request; false when the front-end is gone.
    private func handleMessage() -> Bool {
        var buffer = [UInt8](repeating: 0, count: 12)
        var fds: [Int32] = []
        let n = buffer.withUnsafeMutableBytes { DescriptorPassing.receive(socket, into: $0, fds: &fds) }
        guard n == 12 else { return false }
        let request = u32(buffer, 0), flags = u32(buffer, 4), size = Int(u32(buffer, 8))
        var payload = [UInt8](repeating: 0, count: size)
        if size > 0 {
            let m = payload.withUnsafeMutableBytes { DescriptorPassing.receive(socket, into: $0, fds: &fds) }
            guard m == size else { return false }
        }
        let nfds = fds.count
        seen.withLock { $0.requests.append(request) }
        if request == silentOn { return true }
        var reply: [UInt8]? = nil
        switch request {
        case 1: reply = le64(Virtio.featureVersion1 | Virtio.featureIndirectDescriptors | Virtio.featureEventIndex | (1 << 30))
        case 15: reply = le64(1 << 0 | 1 << 3 | 1 << 9)
        case 16: seen.withLock { $0.protocolFeatures = u64(payload, 0) }
        case 17: reply = le64(2)
        case 2: seen.withLock { $0.features = u64(payload, 0) }
        case 5:
            let count = Int(u32(payload, 0))
            for i in 0..<count where i < nfds {
                let base = 8 + 32 * i
                let guest = u64(payload, base), size = u64(payload, base + 8), user = u64(payload, base + 16), off = u64(payload, base + 24)
                nonisolated(unsafe) let p = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_SHARED, fds[i], off_t(off))!
                seen.withLock { $0.mappings.append(Mapping(guest: guest, size: size, user: user, host: p)) }
                close(fds[i])
            }
        case 8: seen.withLock { $0.rings[Int(u32(payload, 0)), default: Ring()].size = u32(payload, 4) }
        case 9:
            seen.withLock { s in
                var r = s.rings[Int(u32(payload, 0)), default: Ring()]
                r.desc = u64(payload, 8); r.used = u64(payload, 16); r.avail = u64(payload, 24)
                s.rings[Int(u32(payload, 0))] = r
            }
        case 10: seen.withLock { $0.rings[Int(u32(payload, 0)), default: Ring()].lastAvail = UInt16(u32(payload, 4)) }
        case 12: seen.withLock { $0.rings[Int(u64(payload, 0) & 0xFF), default: Ring()].kick = fds[0] }
        case 13: seen.withLock { $0.rings[Int(u64(payload, 0) & 0xFF), default: Ring()].call = fds[0] }
        case 18: seen.withLock { $0.rings[Int(u32(payload, 0)), default: Ring()].enabled = u32(payload, 4) == 1 }
        case 11:
            let index = u32(payload, 0)
            let last = seen.withLock { s -> UInt16 in
                s.vringBaseAsked.append(index)
                let r = s.rings[Int(index)]
                s.rings[Int(index)]?.kick = -1
                return r?.lastAvail ?? 0
            }
            reply = le32(index) + le32(UInt32(last))
        default: break
        }
        if let reply {
            send(request, reply)
        } else if flags & 0x8 != 0 {
            send(request, le64(request == refuse ? 1 : 0))
        }
        return true
    }

    private func send(_ request: UInt32, _ payload: [UInt8]) {
        let message = le32(request) + le32(0x1 | 0x4) + le32(UInt32(payload.count)) + payload
        _ = message.withUnsafeBytes { DescriptorPassing.send(socket, $0, fds: []) }
    }

    /// Our address for one of the front-end's (ring addresses) or a guest-physical one.
    func translate(user address: UInt64) -> UnsafeMutableRawPointer? {
        seen.withLock { s in
            for m in s.mappings where address >= m.user && address - m.user < m.size { return m.host + Int(address - m.user) }
            return nil
        }
    }
    func translate(guest address: UInt64) -> UnsafeMutableRawPointer? {
        seen.withLock { s in
            for m in s.mappings where address >= m.guest && address - m.guest < m.size { return m.host + Int(address - m.guest) }
            return nil
        }
    }

    /// Fill every available chain of ring 0 (direct descriptors only: enough for the test).
    private func serveRing0() {
        guard let ring = seen.withLock({ $0.rings[0] }), ring.enabled,
              let desc = translate(user: ring.desc), let avail = translate(user: ring.avail),
              let used = translate(user: ring.used) else { return }
        var last = ring.lastAvail
        let size = UInt16(ring.size)
        while avail.load(fromByteOffset: 2, as: UInt16.self) != last {
            let head = avail.load(fromByteOffset: 4 + 2 * Int(last % size), as: UInt16.self)
            var i = head, written: UInt32 = 0
            while true {
                let d = desc + 16 * Int(i)
                let addr = d.load(as: UInt64.self), len = d.load(fromByteOffset: 8, as: UInt32.self)
                let flags = d.load(fromByteOffset: 12, as: UInt16.self)
                if flags & 2 != 0, let p = translate(guest: addr) {
                    let n = min(Int(len), Self.pattern.count)
                    Self.pattern.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: n) }
                    written += UInt32(n)
                }
                if flags & 1 == 0 { break }
                i = d.load(fromByteOffset: 14, as: UInt16.self)
            }
            let usedIndex = used.load(fromByteOffset: 2, as: UInt16.self)
            used.storeBytes(of: UInt32(head), toByteOffset: 4 + 8 * Int(usedIndex % size), as: UInt32.self)
            used.storeBytes(of: written, toByteOffset: 8 + 8 * Int(usedIndex % size), as: UInt32.self)
            used.storeBytes(of: usedIndex &+ 1, toByteOffset: 2, as: UInt16.self)
            last &+= 1
        }
        seen.withLock { $0.rings[0]?.lastAvail = last }
        var one: UInt64 = 1
        _ = Glibc.write(ring.call, &one, 8)
    }

    func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
    func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
    func u32(_ p: [UInt8], _ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(p[at + $1]) << (8 * UInt32($1)) } }
    func u64(_ p: [UInt8], _ at: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(p[at + $1]) << (8 * UInt64($1)) } }
}

/// A virtio-fs device on the real PCI transport with its device thread, a front-end on one
/// end of a socketpair and `InProcessBackend` on the other; a driver made of register writes.
final class VhostUserRig {
    let ring: RingBuilder
    let memory: GuestMemory
    let interrupts = RecordingInterrupts()
    let transport: VirtioPCI
    let device: VirtioFS
    let backend: InProcessBackend
    final class Failures: Sendable { let list = Mutex<[String]>([]) }
    let failures = Failures()
    let stopEvent = EventFD()
    var thread: HostThread?

    init(refuse: UInt32? = nil, timeout: Double = 2) throws {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0 else { throw POSIXError(.EIO) }
        backend = InProcessBackend(socket: pair[1], refuse: refuse)
        ring = try RingBuilder(size: 8)
        memory = ring.memory
        let frontend = VhostUserFrontend(socket: pair[0], name: "test back-end", timeout: timeout)
        let failures = self.failures
        device = try VirtioFS(tag: "testfs", frontend: frontend, backend: nil, memory: memory, trace: []) { m in
            failures.list.withLock { $0.append(m) }
        }
        transport = try VirtioPCI(device: device, memory: memory, interrupts: interrupts,
                                  intx: SharedLines(sink: interrupts), intxLine: 10, doorbells: interrupts)
        thread = transport.start(stopFD: stopEvent.fd)
    }

    deinit {
        stopEvent.signal()
        _ = thread?.join(until: monotonicNanoseconds() + 2_000_000_000)
        backend.stop()
    }

    func write(_ offset: UInt64, _ size: Int, _ value: UInt64) { transport.barWrite(0, offset: offset, size: size, value: value) }
    var status: UInt8 { UInt8(transport.barRead(0, offset: VirtioHarness.status, size: 1)) }

    /// What Linux's driver does: features, queue 0 at the RingBuilder's addresses, DRIVER_OK.
    func start(features: UInt64) {
        typealias H = VirtioHarness
        write(H.status, 1, 0); write(H.status, 1, 1); write(H.status, 1, 3)
        write(H.driverFeatureSelect, 4, 0); write(H.driverFeature, 4, features & 0xFFFF_FFFF)
        write(H.driverFeatureSelect, 4, 1); write(H.driverFeature, 4, features >> 32)
        write(H.status, 1, 11)
        write(H.queueSelect, 2, 0); write(H.queueSize, 2, 8)
        write(H.queueDesc, 8, RingBuilder.desc); write(H.queueDriver, 8, RingBuilder.avail); write(H.queueDevice, 8, RingBuilder.used)
        write(H.queueEnable, 2, 1)
        write(H.status, 1, 15)
    }

    func waitFor(_ seconds: Double, _ condition: () -> Bool) -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end { if condition() { return true }; usleep(1000) }
        return condition()
    }
}

@Suite("vhost-user front-end against an in-process back-end")
struct VhostUserTests {
    static let features = Virtio.featureVersion1 | Virtio.featureEventIndex

    @Test("negotiation: features, protocol features (MQ, REPLY_ACK only), SET_OWNER, queue count")
    func negotiation() throws {
        let rig = try VhostUserRig()
        let seen = rig.backend.seen.withLock { $0 }
        #expect(Array(seen.requests.prefix(5)) == [1, 15, 16, 3, 17])
        #expect(seen.protocolFeatures == (1 << 0 | 1 << 3))       // CONFIG (bit 9) offered, not taken
        // The tag and one request queue, as struct virtio_fs_config lays them out.
        #expect(rig.transport.barRead(0, offset: VirtioPCI.deviceOffset, size: 4) == 0x7473_6574)   // "test"
        #expect(rig.transport.barRead(0, offset: VirtioPCI.deviceOffset + 36, size: 4) == 1)
    }

    @Test("DRIVER_OK hands ring 0 over: guest RAM mapped from the memory file, ring addresses that reach the same bytes, kicks through, interrupts back")
    func dataPath() throws {
        let rig = try VhostUserRig()
        rig.start(features: Self.features)
        #expect(rig.status == 15)
        #expect(rig.waitFor(2) { rig.backend.seen.withLock { $0.rings[0]?.enabled ?? false } })
        let seen = rig.backend.seen.withLock { $0 }
        #expect(seen.features == Self.features | (1 << 30))
        #expect(seen.mappings.count == rig.memory.regions.count)
        #expect(seen.rings[0]?.size == 8)
        #expect(seen.rings[1] == nil)                                // queue 1 was never enabled
        // The back-end's view of a guest address is our view of it: one memory, two mappings.
        try rig.memory.store(UInt64(0x1122_3344_5566_7788), at: 0x40000)
        #expect(rig.backend.translate(guest: 0x40000)?.load(as: UInt64.self) == 0x1122_3344_5566_7788)

        var ring = rig.ring
        try ring.setDescriptor(0, address: RingBuilder.data, length: 64, flags: 2)
        try ring.post(0)
        rig.write(VirtioPCI.notifyOffset, 2, 0)                      // the kick (no doorbell without KVM)
        #expect(rig.waitFor(2) { ring.usedIdx == 1 })
        #expect(ring.usedElement(0).length == UInt32(InProcessBackend.pattern.count))
        #expect(rig.memory.bytes(at: RingBuilder.data, count: InProcessBackend.pattern.count) == InProcessBackend.pattern)
        // The back-end's call came back as an interrupt: MSI-X is off, so INTx and the ISR bit.
        #expect(rig.waitFor(2) { rig.interrupts.isHigh(10) })
        #expect(rig.transport.isrStatus & VirtioInterrupts.isrQueue != 0)
    }

    @Test("a reset takes the rings back with GET_VRING_BASE, and a second start hands them over again")
    func resetAndRestart() throws {
        let rig = try VhostUserRig()
        rig.start(features: Self.features)
        var ring = rig.ring
        try ring.setDescriptor(0, address: RingBuilder.data, length: 16, flags: 2)
        try ring.post(0)
        rig.write(VirtioPCI.notifyOffset, 2, 0)
        #expect(rig.waitFor(2) { ring.usedIdx == 1 })
        rig.write(VirtioHarness.status, 1, 0)
        #expect(rig.backend.seen.withLock { $0.vringBaseAsked } == [0])
        #expect(rig.status == 0)
        rig.start(features: Self.features)
        #expect(rig.waitFor(2) { rig.backend.seen.withLock { $0.rings[0]?.kick ?? -1 } >= 0 })
        #expect(rig.failures.list.withLock { $0 }.isEmpty)
    }

    @Test("a back-end that refuses its rings: DEVICE_NEEDS_RESET for the driver, one message for the user")
    func refusal() throws {
        let rig = try VhostUserRig(refuse: 5)                        // SET_MEM_TABLE
        rig.start(features: Self.features)
        #expect(rig.status & Virtio.statusNeedsReset != 0)
        let failures = rig.failures.list.withLock { $0 }
        #expect(failures.count == 1)
        #expect(failures.first?.contains("refused SET_MEM_TABLE") == true)
    }

    @Test("a back-end that goes away mid-run: the device thread notices, the driver gets NEEDS_RESET, the owner one message")
    func backendDies() throws {
        let rig = try VhostUserRig()
        rig.start(features: Self.features)
        rig.backend.stop()
        close(rig.backend.socket)
        #expect(rig.waitFor(3) { !rig.failures.list.withLock { $0 }.isEmpty })
        #expect(rig.status & Virtio.statusNeedsReset != 0)
        #expect(rig.failures.list.withLock { $0 }.first?.contains("the vhost-user back-end closed its connection") == true)
        // A reset afterwards does not talk to the dead back-end or fail again.
        rig.write(VirtioHarness.status, 1, 0)
        #expect(rig.failures.list.withLock { $0 }.count == 1)
    }

    @Test("a back-end that never answers costs the front-end its deadline, not the run")
    func silentBackend() throws {
        var pair: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
        let backend = InProcessBackend(socket: pair[1], silentOn: 1)
        defer { backend.stop(); close(pair[1]) }
        let frontend = VhostUserFrontend(socket: pair[0], name: "silent", timeout: 0.3)
        let start = Date()
        #expect(throws: VhostUserError.self) { try frontend.connect(queueCount: 2) }
        #expect(Date().timeIntervalSince(start) < 2)
        do {
            try frontend.connect(queueCount: 2)
        } catch {
            #expect(error.description.contains("no reply to GET_FEATURES"))
        }
    }
}
