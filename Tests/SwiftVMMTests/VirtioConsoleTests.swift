import Devices
import Glibc
import HostSupport
import Memory
import Synchronization
import Testing

/// A virtio-console behind its PCI transport with every queue set up, driven as Linux's
/// virtio_console would: control buffers posted (and re-posted once read), control messages
/// sent on the control transmit queue, data buffers on the ports' queues.
final class ConsoleRig {
    let console: VirtioConsole
    let h: VirtioHarness
    static let controlBuffers: UInt64 = 0x100000, controlOut: UInt64 = 0x110000
    static let receiveBuffers: UInt64 = 0x120000, transmitBuffers: UInt64 = 0x200000
    /// Used entries already read, per queue.
    var seen: [Int: UInt16] = [:]

    struct Message: Equatable, CustomStringConvertible {
        var id: UInt32, event: VirtioConsole.ControlEvent, value: UInt16, name: String? = nil
        var description: String { "\(event)(\(id), \(value)\(name.map { ", \"\($0)\"" } ?? ""))" }
    }

    init(_ ports: [VirtioConsole.Port], queueSize: UInt16 = 16) throws {
        console = try VirtioConsole(ports: ports, trace: [])
        h = try VirtioHarness(console, queueSize: queueSize)
        try start()
    }

    /// (Again) what a driver does at probe: features, every queue, DRIVER_OK.
    func start() throws {
        try h.start(features: Virtio.featureVersion1 | VirtioConsole.featureMultiport, queues: console.queueCount)
        seen = [:]
    }

    var guestErrors: UInt64 { console.counters.guestErrors.load(ordering: .relaxed) }

    /// Post `count` control receive buffers of `size` bytes and let the device fill them.
    func postControlBuffers(_ count: Int, size: UInt32 = 256) throws {
        for i in 0..<count { try h.post([(Self.controlBuffers + UInt64(i) * 0x100, size, true)], queue: 2) }
        h.transport.processNow(2)
    }

    /// A message from the driver (the 8-byte header, and `extra` after it).
    @discardableResult
    func send(_ id: UInt32, _ event: UInt16, _ value: UInt16, extra: [UInt8] = []) throws -> UInt32? {
        let at = Self.controlOut
        try h.memory.store(id, at: at)
        try h.memory.store(event, at: at + 4)
        try h.memory.store(value, at: at + 6)
        try h.memory.write(extra, at: at + 8)
        return try h.submit([(at, UInt32(8 + extra.count), false)], queue: 3)
    }

    /// Chains of queue `q` the device used since the last look: (head, buffer address, length).
    func used(_ q: Int) -> [(head: UInt16, address: UInt64, length: UInt32)] {
        let r = h.rings[q]
        var out: [(UInt16, UInt64, UInt32)] = []
        var i = seen[q] ?? 0
        while i != r.usedIdx {
            let e = r.usedElement(Int(i % r.size))
            out.append((UInt16(e.id), h.memory.load(UInt64.self, at: r.descAddress + 16 * UInt64(e.id))!, e.length))
            i &+= 1
        }
        seen[q] = i
        return out
    }

    /// The messages the device sent since the last look; their buffers are posted again, as
    /// Linux's control_work_handler does.
    func messages() throws -> [Message] {
        var out: [Message] = []
        for u in used(2) {
            let bytes = h.memory.bytes(at: u.address, count: Int(u.length))
            if bytes.count >= 8 {
                let id = UInt32(bytes[0]) | UInt32(bytes[1]) << 8 | UInt32(bytes[2]) << 16 | UInt32(bytes[3]) << 24
                let event = VirtioConsole.ControlEvent(rawValue: UInt16(bytes[4]) | UInt16(bytes[5]) << 8)!
                let value = UInt16(bytes[6]) | UInt16(bytes[7]) << 8
                out.append(Message(id: id, event: event, value: value,
                                   name: bytes.count > 8 ? String(decoding: bytes[8...], as: UTF8.self) : nil))
            }
            try h.rings[2].post(u.head)
        }
        h.transport.processNow(2)
        return out
    }

    /// DEVICE_READY, PORT_READY for every port, then PORT_OPEN(1) from the guest for `open`.
    @discardableResult
    func handshake(open: [Int] = []) throws -> [Message] {
        try postControlBuffers(16)
        try send(0xFFFF_FFFF, 0, 1)
        var out = try messages()
        for p in console.ports.indices {
            try send(UInt32(p), 3, 1)
            out += try messages()
        }
        for p in open { try send(UInt32(p), 6, 1) }
        return out
    }

    /// Post `count` receive buffers of `size` bytes on `port`.
    func postReceive(port: Int, count: Int, size: UInt32) throws {
        for _ in 0..<count {
            let slot = UInt64(h.nextDescriptors[VirtioConsole.receiveQueue(port: port)])
            try h.post([(Self.receiveBuffers + UInt64(port) * 0x20000 + slot * 0x1000, size, true)],
                       queue: VirtioConsole.receiveQueue(port: port))
        }
    }

    /// Bytes the device put in `port`'s receive buffers since the last look, in used order.
    func received(port: Int) -> [UInt8] {
        used(VirtioConsole.receiveQueue(port: port)).flatMap { h.memory.bytes(at: $0.address, count: Int($0.length)) }
    }

    /// Post `bytes` as chains of at most `chunk` bytes on `port`'s transmit queue (each chain
    /// in its own buffer), without serving them.
    func postTransmit(port: Int, _ bytes: [UInt8], chunk: Int = 32 << 10) throws {
        let q = VirtioConsole.transmitQueue(port: port)
        var offset = 0
        while offset < bytes.count {
            let n = min(chunk, bytes.count - offset)
            let slot = UInt64(h.nextDescriptors[q])
            let at = Self.transmitBuffers + UInt64(port) * 0x80000 + slot * UInt64(chunk)
            try h.memory.write(Array(bytes[offset..<offset + n]), at: at)
            try h.post([(at, UInt32(n), false)], queue: q)
            offset += n
        }
    }
}

/// The tests' pipes (the read ends non-blocking), closed in the order that lets a console's
/// writer threads go: the read ends first (a writer stuck in write() gets EPIPE), then the
/// writers are stopped, then the write ends, so no writer ever writes to an fd number that
/// was closed and handed to something else meanwhile.
final class Pipes {
    private var readEnds: [Int32] = [], writeEnds: [Int32] = []

    func make(size: Int32? = nil) -> (read: Int32, write: Int32) {
        var fds: [Int32] = [0, 0]
        precondition(pipe(&fds) == 0)
        _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
        if let size { _ = fcntl(fds[1], 1031 /* F_SETPIPE_SZ */, size) }
        readEnds.append(fds[0])
        writeEnds.append(fds[1])
        return (fds[0], fds[1])
    }

    /// Close one write end early (the end of an input).
    func closeWriteEnd(_ fd: Int32) {
        writeEnds.removeAll { $0 == fd }
        Glibc.close(fd)
    }

    func close(stopping console: VirtioConsole?) {
        for fd in readEnds { Glibc.close(fd) }
        readEnds = []
        if let console { _ = console.closeOutputs(waitingUpTo: 5) }
        for fd in writeEnds { Glibc.close(fd) }
        writeEnds = []
    }

    deinit { close(stopping: nil) }
}

/// Read from a non-blocking fd until `count` bytes came, or `seconds` passed; `between` runs
/// after each read (a test serving the queue meanwhile).
fileprivate func readPipe(_ fd: Int32, count: Int, within seconds: Double, between: () -> Void = {}) -> [UInt8] {
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
    while out.count < count && monotonicNanoseconds() < deadline {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        _ = poll(&p, 1, 10)
        let n = read(fd, &buffer, min(buffer.count, count - out.count))
        if n > 0 { out += buffer[0..<n] }
        between()
    }
    return out
}

fileprivate func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
    var off = 0
    while off < bytes.count {
        let n = bytes[off...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress!, $0.count) }
        precondition(n > 0)
        off += n
    }
}

/// Whether an eventfd has been signalled (and drain it).
fileprivate func signalled(_ e: EventFD) -> Bool { e.drain() != 0 }

/// Where two byte strings first differ (nil: nowhere). Expectations compare long ones with
/// this: a failed `==` on 512 KiB arrays has the test library print and diff them for minutes.
fileprivate func firstDifference(_ a: [UInt8], _ b: [UInt8]) -> Int? {
    if let i = (0..<min(a.count, b.count)).first(where: { a[$0] != b[$0] }) { return i }
    return a.count == b.count ? nil : min(a.count, b.count)
}

/// A byte pattern where a byte out of place or repeated shows.
fileprivate func pattern(_ count: Int, seed: Int = 0) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: ($0 / 4096) * 7 + $0 % 251 + seed) } }

@Suite("virtio-console")
struct VirtioConsoleTests {
    typealias Port = VirtioConsole.Port
    typealias Message = ConsoleRig.Message

    @Test("identity, features, max_nr_ports and queue count")
    func identity() throws {
        let rig = try ConsoleRig([Port(name: nil), Port(name: "a"), Port(name: "b", output: .memory)])
        let c = rig.h.transport.config
        #expect(c.get16(2) == 0x1043)
        #expect(c.get32(8) >> 8 == 0x07_80_00)
        #expect(rig.h.deviceFeatures & VirtioConsole.featureMultiport != 0)
        #expect(rig.h.deviceFeatures & VirtioConsole.featureSize == 0)
        #expect(rig.h.read(VirtioPCI.deviceOffset + 4, 4) == 3)           // max_nr_ports
        #expect(rig.h.read(VirtioPCI.deviceOffset, 4) == 0)               // cols, rows
        #expect(rig.console.queueCount == 8)
        #expect(VirtioConsole.receiveQueue(port: 0) == 0 && VirtioConsole.transmitQueue(port: 0) == 1)
        #expect(VirtioConsole.receiveQueue(port: 1) == 4 && VirtioConsole.transmitQueue(port: 2) == 7)
        #expect(rig.console.port(named: "b") == 2 && rig.console.port(named: "c") == nil)
    }

    @Test("port lists the device cannot offer are typed errors")
    func badPortLists() {
        let cases: [([Port], VirtioConsole.ConfigurationError)] = [
            ([], .portCount(0)),
            (Array(repeating: Port(name: nil), count: 17), .portCount(17)),
            ([Port(name: nil), Port(name: "")], .badName(port: 1, "")),
            ([Port(name: nil), Port(name: "a/b")], .badName(port: 1, "a/b")),
            ([Port(name: String(repeating: "x", count: 128))], .badName(port: 0, String(repeating: "x", count: 128))),
            ([Port(name: "x"), Port(name: "x")], .duplicateName("x")),
            ([Port(name: nil, input: 0), Port(name: "x", input: 0)], .moreThanOneInput(ports: [0, 1])),
            ([Port(name: nil, output: .fd(-1))], .badFD(port: 0, -1)),
        ]
        for (ports, expected) in cases {
            #expect(throws: expected) { try VirtioConsole(ports: ports, trace: []) }
        }
    }

    @Test("handshake: DEVICE_READY → a PORT_ADD per port; PORT_READY → CONSOLE_PORT, PORT_OPEN, PORT_NAME")
    func handshake() throws {
        let pipes = Pipes()
        let input = pipes.make()
        let rig = try ConsoleRig([Port(name: nil), Port(name: "org.swiftvmm.stdin", input: input.read),
                                  Port(name: "org.swiftvmm.status", output: .memory)])
        // Before the driver posted control buffers the answers wait.
        try rig.send(0xFFFF_FFFF, 0, 1)
        #expect(rig.console.pendingControlMessages == 3)
        #expect(try rig.messages().isEmpty)
        try rig.postControlBuffers(8)
        #expect(try rig.messages() == [Message(id: 0, event: .portAdd, value: 1), Message(id: 1, event: .portAdd, value: 1),
                                       Message(id: 2, event: .portAdd, value: 1)])
        #expect(rig.console.pendingControlMessages == 0)

        try rig.send(0, 3, 1)
        #expect(try rig.messages() == [Message(id: 0, event: .consolePort, value: 1), Message(id: 0, event: .portOpen, value: 1)])
        try rig.send(2, 3, 1)
        #expect(try rig.messages() == [Message(id: 2, event: .portOpen, value: 1),
                                       Message(id: 2, event: .portName, value: 1, name: "org.swiftvmm.status")])
        try rig.send(1, 3, 1)
        #expect(try rig.messages() == [Message(id: 1, event: .portOpen, value: 1),
                                       Message(id: 1, event: .portName, value: 1, name: "org.swiftvmm.stdin")])
        #expect(rig.console.isReady(port: 1) && rig.console.isReady(port: 2))

        // The guest opens and closes a port: recorded, and the owner is told.
        _ = signalled(rig.console.changed)
        #expect(!rig.console.guestOpen(port: 2))
        try rig.send(2, 6, 1)
        #expect(rig.console.guestOpen(port: 2))
        #expect(signalled(rig.console.changed))
        try rig.send(2, 6, 0)
        #expect(!rig.console.guestOpen(port: 2))
        // A driver that asks again (Linux does on a PORT_ADD it already had) is answered again.
        try rig.send(2, 3, 1)
        #expect(try rig.messages().count == 2)
        #expect(rig.guestErrors == 0)
        #expect(rig.console.controlMessagesIn.load(ordering: .relaxed) == 7)
        #expect(rig.console.controlMessagesOut.load(ordering: .relaxed) == 11)
        #expect(rig.h.status & Virtio.statusNeedsReset == 0)
    }

    @Test("data both ways on a named port through real pipes; input waits for buffers and an open port")
    func dataBothWays() throws {
        let pipes = Pipes()
        let input = pipes.make(), output = pipes.make()
        let rig = try ConsoleRig([Port(name: nil), Port(name: "io", input: input.read, output: .fd(output.write))])
        defer { pipes.close(stopping: rig.console) }
        try rig.handshake()
        writeAll(input.write, Array("hello, guest".utf8))

        // Not open in the guest yet, then no buffers: the bytes stay in the pipe.
        try rig.postReceive(port: 1, count: 2, size: 64)
        #expect(!rig.h.transport.processHostNow(timeout: 50))
        try rig.send(1, 6, 1)
        try rig.send(1, 6, 0)
        #expect(!rig.h.transport.processHostNow(timeout: 50))
        try rig.send(1, 6, 1)
        #expect(rig.h.transport.processHostNow(timeout: 1000))
        #expect(rig.received(port: 1) == Array("hello, guest".utf8))
        #expect(rig.console.portCounters[1].bytesIn.load(ordering: .relaxed) == 12)

        try rig.postTransmit(port: 1, Array("hello, host\n".utf8))
        try rig.postTransmit(port: 1, Array("and again\n".utf8))
        rig.h.transport.processNow(VirtioConsole.transmitQueue(port: 1))
        #expect(rig.used(VirtioConsole.transmitQueue(port: 1)).count == 2)
        #expect(readPipe(output.read, count: 22, within: 5) == Array("hello, host\nand again\n".utf8))
        #expect(rig.console.portCounters[1].bytesOut.load(ordering: .relaxed) == 22)
        #expect(rig.console.portCounters[1].bytesDropped.load(ordering: .relaxed) == 0)

        // The second buffer is used up, then input waits for the next one.
        writeAll(input.write, [1, 2, 3])
        #expect(rig.h.transport.processHostNow(timeout: 1000))
        writeAll(input.write, [4])
        #expect(!rig.h.transport.processHostNow(timeout: 50))
        try rig.postReceive(port: 1, count: 1, size: 64)
        #expect(rig.h.transport.processHostNow(timeout: 1000))
        #expect(rig.received(port: 1) == [1, 2, 3, 4])
        #expect(rig.guestErrors == 0)
    }

    /// The input's end must reach the guest after every byte read before it: the PORT_OPEN(0)
    /// is sent only when a read returns 0, and every read goes into a buffer pushed at once.
    @Test("input end: every byte is in the used ring before PORT_OPEN(id, 0) is sent (pipe, regular file, /dev/null)",
          arguments: ["pipe", "file", "null"])
    func inputEnd(kind: String) throws {
        let data = kind == "null" ? [] : pattern(3000)
        let pipes = Pipes()
        var fd: Int32
        switch kind {
        case "pipe":
            let p = pipes.make()
            writeAll(p.write, data)
            pipes.closeWriteEnd(p.write)
            fd = dup(p.read)
        case "file":
            let path = "/tmp/swiftvmm-console-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
            fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
            unlink(path)
            writeAll(fd, data)
            lseek(fd, 0, SEEK_SET)
        default:
            fd = open("/dev/null", O_RDONLY)
        }
        defer { close(fd) }
        let rig = try ConsoleRig([Port(name: nil), Port(name: "stdin", input: fd)])
        try rig.handshake(open: [1])
        #expect(try rig.messages().isEmpty)

        // Give the input turns until it has nothing more to do; what the driver was told meanwhile.
        func pump() throws -> [ConsoleRig.Message] {
            var turns = 0
            while turns < 8 && rig.h.transport.processHostNow(timeout: 200) { turns += 1 }
            return try rig.messages()
        }
        var got: [UInt8] = []
        if !data.isEmpty {
            // Two buffers hold 2048 of the 3000 bytes: no end yet.
            try rig.postReceive(port: 1, count: 2, size: 1024)
            #expect(try pump().isEmpty)
            got = rig.received(port: 1)
            #expect(got.count == 2048)
        }
        // Two more: the rest goes into the first, then the read of 0 becomes PORT_OPEN(1, 0).
        try rig.postReceive(port: 1, count: 2, size: 1024)
        let before = rig.h.rings[VirtioConsole.receiveQueue(port: 1)].usedIdx
        let messages = try pump()
        #expect(messages == [Message(id: 1, event: .portOpen, value: 0)])
        got += rig.received(port: 1)
        #expect(firstDifference(got, data) == nil)
        #expect(rig.h.rings[VirtioConsole.receiveQueue(port: 1)].usedIdx == before &+ (data.isEmpty ? 0 : 1))
        #expect(rig.h.transport.queueHasAvailable(VirtioConsole.receiveQueue(port: 1)))   // the last buffer is left
        // Ended: the fd is not polled again (a regular file or /dev/null would be ready for ever).
        #expect(!rig.h.transport.processHostNow(timeout: 0))
        #expect(rig.console.portCounters[1].bytesIn.load(ordering: .relaxed) == UInt64(data.count))
        // A driver setting the port up again hears that the host side is closed.
        try rig.send(1, 3, 1)
        #expect(try rig.messages().first == Message(id: 1, event: .portOpen, value: 0))
        #expect(rig.guestErrors == 0)
    }

    @Test("an output pipe nobody reads: serving returns, the chains wait in the ring, then arrive in order")
    func backpressure() throws {
        let pipes = Pipes()
        let output = pipes.make(size: 4096)
        let rig = try ConsoleRig([Port(name: nil), Port(name: "stdout", output: .fd(output.write))])
        defer { pipes.close(stopping: rig.console) }
        try rig.handshake()
        let q = VirtioConsole.transmitQueue(port: 1)
        let data = pattern(16 * 32 << 10)              // 512 KiB: twice the backlog
        try rig.postTransmit(port: 1, data)

        // Served on another thread: if it blocked on the pipe, the test would see it not return.
        let returned = Atomic<Bool>(false)
        let transport = rig.h.transport
        let server = HostThread.start(name: "test-serve") {
            transport.processNow(q)
            returned.store(true, ordering: .releasing)
        }
        #expect(server.join(until: monotonicNanoseconds() + 5_000_000_000))
        let didReturn = returned.load(ordering: .acquiring)
        #expect(didReturn)
        let firstTurn = rig.used(q).count
        #expect(firstTurn < 16)
        #expect(rig.h.transport.queueHasAvailable(q))
        #expect(rig.console.portCounters[1].bytesOut.load(ordering: .relaxed) < UInt64(data.count))

        // Read the pipe, serving the queue meanwhile as the device thread would when the
        // writer's kick wakes it (the next test has the thread itself).
        let got = readPipe(output.read, count: data.count, within: 20) { transport.processNow(q) }
        #expect(got.count == data.count)
        #expect(firstDifference(got, data) == nil)
        #expect(firstTurn + rig.used(q).count == 16)
        #expect(!rig.h.transport.queueHasAvailable(q))
        #expect(rig.console.portCounters[1].bytesDropped.load(ordering: .relaxed) == 0)
    }

    @Test("with its device thread: a full output does not keep it from a stop request, and reading resumes it")
    func deviceThread() throws {
        let pipes = Pipes()
        let output = pipes.make(size: 4096)
        let rig = try ConsoleRig([Port(name: nil), Port(name: "stdout", output: .fd(output.write))])
        defer { pipes.close(stopping: rig.console) }
        try rig.handshake()
        let q = VirtioConsole.transmitQueue(port: 1)
        let stop = EventFD()
        let thread = rig.h.transport.start(stopFD: stop.fd)

        let data = pattern(16 * 32 << 10, seed: 3)
        try rig.postTransmit(port: 1, data)
        rig.h.write(VirtioPCI.notifyOffset + 4 * UInt64(q), 2, UInt64(q))       // the guest's kick
        // Nobody serves but the device thread, and once the backlog is full only the writer's
        // kick can wake it for this queue: all of it arrives once the pipe is read.
        let got = readPipe(output.read, count: data.count, within: 20)
        #expect(firstDifference(got, data) == nil)
        let deadline = monotonicNanoseconds() + 5_000_000_000
        while rig.h.rings[q].usedIdx != 16 && monotonicNanoseconds() < deadline { usleep(1000) }
        #expect(rig.h.rings[q].usedIdx == 16)

        // Again, and this time nobody reads: once the backlog is full the thread still stops.
        try rig.postTransmit(port: 1, data)
        rig.h.write(VirtioPCI.notifyOffset + 4 * UInt64(q), 2, UInt64(q))
        var last: UInt64 = 0
        for _ in 0..<100 {
            usleep(10_000)
            let now = rig.console.portCounters[1].bytesOut.load(ordering: .relaxed)
            if now == last { break }
            last = now
        }
        #expect(rig.h.rings[q].usedIdx != 32)
        stop.signal()
        #expect(thread.join(until: monotonicNanoseconds() + 2_000_000_000))
    }

    @Test("hostile control messages and buffers are guest errors; the device goes on")
    func hostile() throws {
        let rig = try ConsoleRig([Port(name: nil), Port(name: "a"), Port(name: "b", output: .memory)])
        try rig.handshake()
        let at = ConsoleRig.controlOut
        let cases: [(String, () throws -> UInt32?)] = [
            ("PORT_READY for a port that is not there", { try rig.send(3, 3, 1) }),
            ("PORT_READY for BAD_ID", { try rig.send(0xFFFF_FFFF, 3, 1) }),
            ("PORT_OPEN for a port that is not there", { try rig.send(99, 6, 1) }),
            ("an unknown event", { try rig.send(1, 42, 1) }),
            ("an event only the device sends", { try rig.send(1, 1, 1) }),
            ("a name from the driver", { try rig.send(1, 7, 1, extra: Array("evil".utf8)) }),
            ("a 4-byte message", { try rig.h.submit([(at, 4, false)], queue: 3) }),
            ("a message in a device-writable buffer", { try rig.h.submit([(at, 8, true)], queue: 3) }),
            ("a message outside RAM", { try rig.h.submit([(1 << 40, 8, false)], queue: 3) }),
            ("a message of 4 GiB", { try rig.h.submit([(at, 0xFFFF_FFFF, false)], queue: 3) }),
            ("output outside RAM", { try rig.h.submit([(1 << 40, 16, false)], queue: VirtioConsole.transmitQueue(port: 2)) }),
            ("output of 4 GiB", { try rig.h.submit([(RingBuilder.data, 0xFFFF_FFFF, false)], queue: VirtioConsole.transmitQueue(port: 2)) }),
        ]
        for (i, c) in cases.enumerated() {
            #expect(try c.1() == 0, "\(c.0)")
            #expect(rig.guestErrors == UInt64(i + 1), "\(c.0)")
        }
        #expect(try rig.messages().isEmpty)
        #expect(rig.console.collected(port: 2).isEmpty)
        // A configuration write elsewhere than emerg_wr.
        rig.h.write(VirtioPCI.deviceOffset + 4, 4, 0xFFFF)
        #expect(rig.guestErrors == UInt64(cases.count + 1))
        #expect(rig.h.read(VirtioPCI.deviceOffset + 4, 4) == 3)

        // A control buffer too small for the message: handed back empty, the message waits.
        // First use up the posted control buffers with answers nobody reads back.
        let errors = rig.guestErrors
        for _ in 0..<20 where rig.console.pendingControlMessages == 0 { try rig.send(1, 3, 1) }
        _ = rig.used(2)
        let waiting = rig.console.pendingControlMessages
        #expect(waiting > 0)
        try rig.h.post([(ConsoleRig.controlBuffers, 4, true)], queue: 2)
        rig.h.transport.processNow(2)
        #expect(rig.used(2).map(\.length) == [0])
        #expect(rig.console.pendingControlMessages == waiting)
        #expect(rig.guestErrors == errors + 1)

        // DEVICE_READY in a loop without buffers: the backlog stays bounded, the rest is counted.
        for _ in 0..<100 { try rig.send(0xFFFF_FFFF, 0, 1) }
        let capacity = 4 * 3 + 8
        #expect(rig.console.pendingControlMessages == capacity)
        #expect(rig.console.controlMessagesDropped.load(ordering: .relaxed) == UInt64(waiting + 300 - capacity))
        // Buffers arrive: the waiting messages go out, and the device still works.
        try rig.postControlBuffers(16)
        #expect(rig.used(2).count == 16)
        #expect(rig.h.status & Virtio.statusNeedsReset == 0)
        try rig.postTransmit(port: 2, Array("ok".utf8))
        rig.h.transport.processNow(VirtioConsole.transmitQueue(port: 2))
        #expect(rig.console.collected(port: 2) == Array("ok".utf8))
    }

    @Test("a receive buffer the device cannot write is a guest error and comes back empty")
    func badReceiveBuffer() throws {
        let pipes = Pipes()
        let input = pipes.make()
        let rig = try ConsoleRig([Port(name: nil), Port(name: "in", input: input.read)])
        try rig.handshake(open: [1])
        writeAll(input.write, [7, 7, 7])
        let q = VirtioConsole.receiveQueue(port: 1)
        try rig.h.post([(0x2000, 64, true)], queue: q)                    // read-only memory
        try rig.h.post([(1 << 40, 64, true)], queue: q)                   // outside RAM
        try rig.h.post([(ConsoleRig.receiveBuffers, 64, false)], queue: q)  // not device-writable
        for _ in 0..<3 { #expect(rig.h.transport.processHostNow(timeout: 1000)) }
        #expect(rig.used(q).map(\.length) == [0, 0, 0])
        #expect(rig.guestErrors == 3)
        try rig.postReceive(port: 1, count: 1, size: 64)
        #expect(rig.h.transport.processHostNow(timeout: 1000))
        #expect(rig.received(port: 1) == [7, 7, 7])
    }

    @Test("a memory port collects what the guest writes, up to its limit; emerg_wr goes to port 0")
    func memoryPort() throws {
        let rig = try ConsoleRig([Port(name: nil, output: .memory), Port(name: "status", output: .memory)])
        try rig.handshake(open: [1])
        _ = signalled(rig.console.changed)
        try rig.postTransmit(port: 1, Array("exit 3\n".utf8))
        rig.h.transport.processNow(VirtioConsole.transmitQueue(port: 1))
        #expect(rig.console.collected(port: 1) == Array("exit 3\n".utf8))
        #expect(signalled(rig.console.changed))
        #expect(rig.console.collected(port: 0).isEmpty)

        // Past the limit: kept up to it, the rest counted as dropped, the guest never waits.
        try rig.postTransmit(port: 1, pattern(VirtioConsole.memoryLimit))
        rig.h.transport.processNow(VirtioConsole.transmitQueue(port: 1))
        #expect(!rig.h.transport.queueHasAvailable(VirtioConsole.transmitQueue(port: 1)))
        let kept = rig.console.collected(port: 1)
        #expect(kept.count == VirtioConsole.memoryLimit)
        #expect(Array(kept.prefix(7)) == Array("exit 3\n".utf8) && Array(kept.dropFirst(7)) == Array(pattern(VirtioConsole.memoryLimit - 7)))
        #expect(rig.console.portCounters[1].bytesDropped.load(ordering: .relaxed) == 7)
        #expect(rig.console.portCounters[1].bytesOut.load(ordering: .relaxed) == UInt64(VirtioConsole.memoryLimit + 7))

        // emerg_wr: one byte for port 0, from a vCPU's configuration write.
        rig.h.write(VirtioPCI.deviceOffset + 8, 4, 0x4F)
        rig.h.write(VirtioPCI.deviceOffset + 8, 1, 0x4B)
        #expect(rig.console.collected(port: 0) == Array("OK".utf8))
        #expect(rig.guestErrors == 0)
    }

    @Test("reset: ports not ready, waiting messages dropped, input position kept, output left in the ring still written")
    func reset() throws {
        let pipes = Pipes()
        let input = pipes.make(), output = pipes.make(size: 4096)
        let rig = try ConsoleRig([Port(name: nil), Port(name: "stdin", input: input.read),
                                  Port(name: "stdout", output: .fd(output.write))])
        defer { pipes.close(stopping: rig.console) }
        try rig.handshake(open: [1, 2])
        let sent = pattern(100, seed: 9)
        writeAll(input.write, sent)
        try rig.postReceive(port: 1, count: 1, size: 40)
        #expect(rig.h.transport.processHostNow(timeout: 1000))
        #expect(rig.received(port: 1) == Array(sent.prefix(40)))
        // Output the pipe cannot take yet, some of it left in the ring.
        let q = VirtioConsole.transmitQueue(port: 2)
        let data = pattern(16 * 32 << 10, seed: 5)
        try rig.postTransmit(port: 2, data)
        rig.h.transport.processNow(q)
        #expect(rig.h.transport.queueHasAvailable(q))
        // Messages waiting for control buffers.
        for _ in 0..<8 { try rig.send(0xFFFF_FFFF, 0, 1) }
        #expect(rig.console.pendingControlMessages > 0)

        rig.h.write(VirtioHarness.status, 1, 0)
        #expect(rig.h.status == 0)
        #expect(!rig.console.isReady(port: 1) && !rig.console.guestOpen(port: 1) && !rig.console.guestOpen(port: 2))
        #expect(rig.console.pendingControlMessages == 0)
        // What the guest had posted before its reset is written out all the same, in order.
        #expect(firstDifference(readPipe(output.read, count: data.count, within: 20), data) == nil)
        #expect(rig.console.portCounters[2].bytesDropped.load(ordering: .relaxed) == 0)

        // Set up again: nothing comes before DEVICE_READY; the input goes on where it was.
        try rig.start()
        try rig.postControlBuffers(16)
        #expect(rig.used(2).isEmpty)
        try rig.send(0xFFFF_FFFF, 0, 1)
        #expect(try rig.messages().count == 3)
        try rig.send(1, 3, 1)
        try rig.send(1, 6, 1)
        try rig.postReceive(port: 1, count: 1, size: 100)
        #expect(rig.h.transport.processHostNow(timeout: 1000))
        #expect(rig.received(port: 1) == Array(sent.dropFirst(40)))
        #expect(rig.guestErrors == 0)
    }

    @Test("finish: what the guest left in the ring is served and written out; a reader that never reads makes it give up in time")
    func finish() throws {
        let pipes = Pipes()
        let output = pipes.make(size: 4096)
        let rig = try ConsoleRig([Port(name: nil), Port(name: "stdout", output: .fd(output.write))])
        defer { pipes.close(stopping: rig.console) }
        try rig.handshake()
        let q = VirtioConsole.transmitQueue(port: 1)
        let data = pattern(16 * 32 << 10, seed: 1)
        try rig.postTransmit(port: 1, data)            // the guest's last writes; nobody served them yet

        // A slow reader: finish must wait for it, serving the ring as room is made.
        let got = Mutex<[UInt8]>([])
        let readerFD = output.read
        let reader = HostThread.start(name: "test-reader") {
            let bytes = readPipe(readerFD, count: data.count, within: 20) { usleep(500) }
            got.withLock { $0 = bytes }
        }
        #expect(rig.console.finish(rig.h.transport, waitingUpTo: 20))
        reader.join()
        #expect(firstDifference(got.withLock { $0 }, data) == nil)
        #expect(rig.h.rings[q].usedIdx == 16)
        // After finish, output is dropped (and counted), never waited for.
        try rig.postTransmit(port: 1, [1, 2, 3])
        rig.h.transport.processNow(q)
        #expect(rig.h.rings[q].usedIdx == 17)
        #expect(rig.console.portCounters[1].bytesDropped.load(ordering: .relaxed) == 3)
    }

    @Test("finish gives up in time on an output nobody reads, and says so")
    func finishGivesUp() throws {
        let pipes = Pipes()
        let output = pipes.make(size: 4096)
        let rig = try ConsoleRig([Port(name: nil), Port(name: "stdout", output: .fd(output.write))])
        try rig.handshake()
        try rig.postTransmit(port: 1, pattern(16 * 32 << 10))
        let start = monotonicNanoseconds()
        #expect(!rig.console.finish(rig.h.transport, waitingUpTo: 0.3))
        #expect(monotonicNanoseconds() - start < 3_000_000_000)
        #expect(!rig.console.closeOutputs(waitingUpTo: 0))
        // The writer is stuck in write(); the reader going away frees it (EPIPE, not SIGPIPE,
        // which would end the test process).
        pipes.close(stopping: rig.console)
        #expect(rig.console.closeOutputs(waitingUpTo: 0))
        #expect(rig.console.portCounters[1].bytesDropped.load(ordering: .relaxed) > 0)
    }
}
