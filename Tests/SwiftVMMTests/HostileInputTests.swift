import Backends
import CrashReports
import Devices
import Foundation
import Glibc
import Memory
import RunControl
import Synchronization
import Testing

/// A network backend in memory: frames queued by the test come out of `receive`.
final class QueuedFrames: NetworkBackend {
    let name = "queued"
    let frames = Mutex<[[UInt8]]>([])
    let receiveFD: Int32 = -1
    func receive(into buffer: UnsafeMutableRawPointer, capacity: Int) -> Int {
        frames.withLock { f in
            guard !f.isEmpty else { return 0 }
            let frame = f.removeFirst()
            let n = min(frame.count, capacity)
            frame.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress!, byteCount: n) }
            return n
        }
    }
    func send(_ pieces: UnsafeBufferPointer<iovec>) -> Bool { true }
}

/// What a hostile guest, kernel file or command line could do to swiftvmm, each a defect that
/// once trapped or spun (issue: robustness); each test failed before its fix.
@Suite("hostile input: guest text, kernel headers, flags, receive rings")
struct HostileInputTests {
    @Test("an oops whose offsets do not fit in 64 bits next to a symbol is left unresolved, not a trap")
    func oopsOffsets() {
        let symbols = Symbolizer(systemMap: "ffffffff81000000 T start_kernel\nffffffff81001000 T rest_init\n")
        let oops = DecodedOops.decode(ripLine: "RIP: 0010:start_kernel+0xffffffffffffffff/0x10",
                                      callTrace: ["rest_init+0xfffffffffffffff0/0x10", "? start_kernel+0x10/0x20"],
                                      symbols: symbols, lines: nil)
        #expect(oops.frames.count == 3)
        #expect(oops.frames[0].offset == UInt64.max && oops.frames[0].location == nil)
        #expect(oops.frames[1].offset == 0xffff_ffff_ffff_fff0)
        #expect(oops.frames[2].symbol == "start_kernel" && oops.frames[2].offset == 0x10)
    }

    @Test("a console that prints frame lines forever keeps at most 64 per oops, and says how many it dropped")
    func oopsFramesCapped() throws {
        let monitor = try ConsoleMonitor(expect: [], failOn: [], detectPanic: true, stop: StopController(), timeline: nil)
        let devNull = open("/dev/null", O_WRONLY)
        defer { close(devNull) }
        let console = Console(fd: devNull, monitor: monitor)
        var text = "RIP: 0010:start_kernel+0x1/0x10\nCall Trace:\n <TASK>\n"
        for i in 0..<20_000 { text += " frame\(i)+0x1/0x10\n" }
        Array(text.utf8).withUnsafeBytes { console.write($0) }
        let oops = try #require(monitor.oops)
        #expect(oops.frames.count == ConsoleMonitor.maxFrames)
        #expect(oops.framesDropped == 20_000 - ConsoleMonitor.maxFrames)
        let decoded = DecodedOops.decode(ripLine: oops.ripLine, callTrace: oops.frames, framesDropped: oops.framesDropped,
                                         symbols: Symbolizer(systemMap: ""), lines: nil)
        #expect(decoded.text.contains("(19936 more frame lines not kept)"))
    }

    @Test("a guest floods its console with oopses of 200 frames and absurd offsets: the run goes on to the guest's own status, the report keeps 64 frames of the last")
    func oopsFloodFromGuest() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvmm-oops-flood-\(UUID()).json")
        defer { try? FileManager.default.removeItem(at: file) }
        let r = try bootMinimal(["oops-flood", "exit=7"], options: ["--report=\(file.path)"])
        #expect(r.status == 7, "\(r.stderr.suffix(2000))")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: file)) as? [String: Any])
        let oops = try #require(json["oops"] as? [String: Any])
        let frames = try #require(oops["frames"] as? [[String: Any]])
        // The RIP line and the first 64 frame lines of the last oops; the other 136 counted.
        #expect(frames.count == 1 + ConsoleMonitor.maxFrames)
        #expect(oops["frames_dropped"] as? Int == 200 - ConsoleMonitor.maxFrames)
        #expect(r.stderr.contains("(136 more frame lines not kept)"))
        // An offset that wraps past 2^64 from its symbol resolves to nothing; a sane one still does.
        #expect(frames.first?["symbol"] as? String == "oops_inner" && frames.first?["file"] is NSNull)
        #expect(frames.contains { $0["symbol"] as? String == "kmain" && $0["offset"] as? String == "0xfffffffffffffff0" && $0["file"] is NSNull })
        #expect(frames.contains { $0["symbol"] as? String == "oops_outer" && ($0["file"] as? String)?.hasSuffix("guests/minimal/ci.c") == true })
        #expect(frames.contains { $0["symbol"] as? String == "no_such_function" && $0["offset"] is NSNull })
    }

    @Test("a memory size near 2^64 bytes is refused with one line (64), not a trap in formatting it; --cpus past the 8-bit APIC IDs is 64")
    func absurdMemoryAndCPUs() throws {
        try requireKVMAndGuest()
        #expect(MemorySize.format(UInt64.max) == "16777216.0 TiB")
        #expect(MemorySize.format((1 << 40) + (1 << 39)) == "1.5 TiB")
        for size in ["17592186044415m", "2000000000001m"] {
            let r = try runVMM([size, Repo.minimalGuest])
            #expect(r.status == 64, "\(size): exit \(r.status): \(r.stderr)")
            #expect(r.stderr.contains("is more than this host has"), "\(r.stderr)")
        }
        let cpus = try runVMM(["--cpus", "255", "32m", Repo.minimalGuest])
        #expect(cpus.status == 64 && cpus.stderr.contains("--cpus can be at most 254"), "\(cpus.stderr)")
    }

    @Test("a FIFO nobody writes or reads given as kernel, --initrd, --system-map, --debug-vmlinux, --report or --console-log: one line at once, no hang")
    func fifoPaths() throws {
        try requireKVMAndGuest()
        let fifo = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvmm-fifo-\(UUID())").path
        #expect(mkfifo(fifo, 0o600) == 0)
        defer { unlink(fifo) }
        let cases: [([String], Int32, String)] = [
            (["32m", fifo], 66, "\(fifo): not a regular file"),
            (["--initrd=\(fifo)", "32m", Repo.minimalGuest], 66, "\(fifo): not a regular file"),
            (["--system-map=\(fifo)", "32m", Repo.minimalGuest, "exit=0"], 66, "--system-map=\(fifo): not a regular file"),
            (["--debug-vmlinux=\(fifo)", "32m", Repo.minimalGuest, "exit=0"], 66, "--debug-vmlinux=\(fifo): not a regular file"),
            (["--report=\(fifo)", "32m", Repo.minimalGuest, "exit=0"], 64, "--report=\(fifo): "),
            (["--console-log=\(fifo)", "32m", Repo.minimalGuest, "exit=0"], 64, "--console-log=\(fifo): "),
            (["inspect", fifo], 66, "\(fifo): not a regular file"),
        ]
        for (args, status, line) in cases {
            let r = try runVMM(args, timeout: 20)
            #expect(r.status == status, "\(args): exit \(r.status): \(r.stderr)")
            #expect(r.stderr.contains(line), "\(args): \(r.stderr)")
        }
    }

    @Test("a bzImage whose header asks for a load address at the top of memory is exit 65 with one line")
    func absurdPreferredAddress() throws {
        try requireKVMAndGuest()
        var image = try DebianKernel.bytes("cloud", "vmlinuz")
        for i in 0..<8 { image[0x258 + i] = i == 0 ? 0x00 : 0xFF }     // pref_address 0xffffffffffffff00
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvmm-prefaddr-\(getpid())")
        try Data(image).write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        let r = try runVMM(["128m", url.path])
        #expect(r.status == 65, "exit \(r.status): \(r.stderr)")
        #expect(r.stderr.contains("preferred load address 0xffffffffffffff00"), "\(r.stderr)")
        let inspect = try runVMM(["inspect", url.path])
        #expect(inspect.status == 65, "inspect: exit \(inspect.status): \(inspect.stderr)")
    }

    @Test("--timeout with an absurd number is a usage error (64), not a trap")
    func absurdTimeout() throws {
        try requireKVMAndGuest()
        for t in ["99999999999999999999999h", "1e400", "400d", "9999999999m"] {
            let r = try runVMM(["--timeout=\(t)", "32m", Repo.minimalGuest, "exit=0"])
            #expect(r.status == 64, "--timeout=\(t): exit \(r.status): \(r.stderr)")
            #expect(r.stderr.contains("--timeout=\(t)"), "\(r.stderr)")
        }
        #expect(DurationText.parse("366d") == nil && DurationText.parse("8784h") == 8784 * 3600)
        // Below the command line, too: the stop controller clamps whatever it is given.
        let stop = StopController()
        stop.stop(.shutdown)
        #expect(stop.wait(timeout: 1e300) == .shutdown)
    }

    /// Serve the receive queue on another thread; true if it came back within `seconds`.
    func receiveReturns(_ h: VirtioHarness, within seconds: Double) -> Bool {
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) let harness = h
        Thread { harness.transport.processNow(0); done.signal() }.start()
        return done.wait(timeout: .now() + seconds) == .success
    }

    @Test("virtio-net with MRG_RXBUF: a frame larger than the posted buffers waits for more instead of spinning, and one larger than the whole ring is dropped")
    func receiveStarvation() throws {
        let backend = QueuedFrames()
        let net = VirtioNet(backend: backend, mac: nil, trace: [])
        let h = try VirtioHarness(net, queueSize: 4)
        h.start(features: Virtio.featureVersion1 | VirtioNet.featureMergeableRX)
        let buffers: UInt64 = 0x40000
        // Two 256-byte buffers posted; a 1000-byte frame needs four.
        for i in 0..<2 {
            try h.ring.setDescriptor(i, address: buffers + UInt64(i) * 256, length: 256, flags: 2)
            try h.ring.post(UInt16(i))
        }
        backend.frames.withLock { $0 = [[UInt8](repeating: 0, count: 12) + [UInt8](repeating: 0xAB, count: 988)] }
        #expect(receiveReturns(h, within: 5), "receive spun on buffers it could not use")
        #expect(h.ring.usedIdx == 0 && net.framesDropped.load(ordering: .relaxed) == 0)
        // Two more: now it fits, in four buffers.
        for i in 2..<4 {
            try h.ring.setDescriptor(i, address: buffers + UInt64(i) * 256, length: 256, flags: 2)
            try h.ring.post(UInt16(i))
        }
        #expect(receiveReturns(h, within: 5))
        #expect(h.ring.usedIdx == 4 && net.framesReceived.load(ordering: .relaxed) == 1)
        #expect(h.memory.load(UInt16.self, at: buffers + 10) == 4)            // num_buffers

        // The whole ring (4 x 256 bytes) posted, and a frame larger than all of it: dropped.
        for i in 0..<4 { try h.ring.post(UInt16(i)) }
        backend.frames.withLock { $0 = [[UInt8](repeating: 0, count: 2000)] }
        #expect(receiveReturns(h, within: 5))
        #expect(net.framesDropped.load(ordering: .relaxed) == 1)
        #expect(h.ring.usedIdx == 4)                                           // the buffers stay posted
    }
}

@Suite("shutdown is bounded")
struct BoundedShutdownTests {
    /// The guest floods COM1 while stdout is a pipe nobody reads: the 1 MiB console backlog
    /// fills (in about 8 s here, where string I/O is emulated byte by byte) and the vCPU waits
    /// for room, holding the UART's lock.
    /// Input typed then makes the console input thread wait for that lock too. Before shutdown
    /// had one deadline, such a run never ended: the timeout fired, but the input thread could
    /// not be joined.
    @Test("stdout a pipe nobody reads, a guest flooding the console and input typed: the run still ends within 2 s of its timeout, 124")
    func unreadStdout() throws {
        try requireKVMAndGuest()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Repo.swiftvmm)
        process.arguments = ["--timeout=11s", "32m", Repo.minimalGuest, "flood"]
        let stdout = Pipe(), stdin = Pipe()
        let stderrURL = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvmm-flood-\(getpid()).err")
        _ = FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: stderrURL) }
        process.standardOutput = stdout
        process.standardError = try FileHandle(forWritingTo: stderrURL)
        process.standardInput = stdin
        let start = Date()
        try process.run()
        Thread.sleep(forTimeInterval: 10)
        stdin.fileHandleForWriting.write(Data("typed while the console is stuck\n".utf8))
        let deadline = start.addingTimeInterval(30)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        let elapsed = Date().timeIntervalSince(start)
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        let stderr = (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? ""
        // 11 s of run, at most 2 s of shutdown, and process start and teardown around them.
        #expect(elapsed < 14.5, "took \(elapsed) s: \(stderr)")
        #expect(process.terminationStatus == 124, "exit \(process.terminationStatus): \(stderr)")
    }
}

@Suite("hostile guests against the devices")
struct HostileDeviceTests {
    @Test("virtio-rng: a request for a whole megabyte gets at most 64 KiB of randomness")
    func rngCap() throws {
        let rng = VirtioRNG(trace: [])
        let h = try VirtioHarness(rng)
        h.start(features: Virtio.featureVersion1)
        #expect(try h.submit([(0x100000, 1 << 20, true)]) == UInt32(VirtioRNG.maxBytesPerRequest))
    }

    @Test("BAR 0 moved so its doorbells collide with another device's: nothing stays half attached, the failure is counted")
    func barOverlap() throws {
        let memory = try GuestMemory(size: 4 << 20)
        let sink = RecordingInterrupts()
        let lines = SharedLines(sink: sink)
        let a = try VirtioPCI(device: VirtioRNG(trace: []), memory: memory, interrupts: sink, intx: lines, intxLine: 10, doorbells: sink)
        let b = try VirtioPCI(device: VirtioNet(backend: QueuedFrames(), mac: nil, trace: []), memory: memory,
                              interrupts: sink, intx: lines, intxLine: 11, doorbells: sink)
        a.barMoved(0, to: 0xC000_0000)                      // a's queue 0 rings at 0xC000_2000
        // b's queue 0 would ring at 0xC000_1FFC (free), its queue 1 at 0xC000_2000 (a's).
        b.barMoved(0, to: 0xC000_0000 - 4)
        #expect(sink.doorbellAddresses == [0xC000_2000])
        #expect(b.doorbellFailures.load(ordering: .relaxed) == 1)
        for _ in 0..<100 { b.barMoved(0, to: 0xC000_0000 - 4) }
        #expect(sink.doorbellAddresses == [0xC000_2000])
        #expect(b.doorbellFailures.load(ordering: .relaxed) == 101)
        // Moved somewhere free: both doorbells attach.
        b.barMoved(0, to: 0xC000_8000)
        #expect(sink.doorbellAddresses == [0xC000_2000, 0xC000_A000, 0xC000_A004])
    }
}
