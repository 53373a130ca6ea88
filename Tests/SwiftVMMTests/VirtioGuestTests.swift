import Foundation
import Testing

/// End-to-end: the bundled guest's own virtio drivers (written to the spec, checked against
/// QEMU) against swiftvmm's devices, on the real /dev/kvm, with real image files and a real tap.
@Suite("Virtio devices with the minimal guest")
struct VirtioGuestTests {
    static let sectors = 1024          // 512 KiB: the pattern's s/256 term is exercised

    static func readPattern(_ s: Int, _ i: Int) -> UInt8 { UInt8((i + 31 * s + s / 256) % 256) }

    func expectPasses(_ r: RunResult, _ names: [String]) {
        let failures = r.lines.filter { $0.hasPrefix("FAIL") }
        #expect(failures.isEmpty, "\(failures)\nstderr: \(r.stderr)")
        for name in names { #expect(r.lines.contains("PASS \(name)"), "missing PASS \(name) in:\n\(r.stdout)\nstderr: \(r.stderr)") }
        #expect(r.status == 0, "stderr: \(r.stderr)")
    }

    @Test("test=blk: reads the pattern, writes sectors 2-3, flushes; the file holds exactly that after exit")
    func blk() throws {
        let image = try makeImage(sectors: Self.sectors)
        defer { try? FileManager.default.removeItem(at: image) }
        let r = try bootMinimal(["test=blk"], options: ["--block=\(image.path)", "--verbose"])
        expectPasses(r, ["blk-init", "blk-msix", "blk-read", "blk-read-last", "blk-write", "blk-readback",
                         "blk-flush", "blk-get-id"])
        #expect(r.lines.contains("blk: capacity \(Self.sectors) sectors"))
        #expect(r.lines.contains("blk: id 'swiftvmm-vda'"))
        // blk-msix: completions arrived as MSI-X messages through the vector's irqfd.
        #expect(r.stderr.contains("virtio-blk vda:") && !r.stderr.contains("(0 MSI-X"), "\(r.stderr)")
        let file = [UInt8](try Data(contentsOf: image))
        #expect(file.count == Self.sectors * 512)
        var wrong: [Int] = []
        for s in 0..<Self.sectors {
            let written = s == 2 || s == 3
            for i in 0..<512 where file[s * 512 + i] != (written ? 255 - Self.readPattern(s, i) : Self.readPattern(s, i)) {
                wrong.append(s)
                break
            }
        }
        #expect(wrong.isEmpty, "sectors with unexpected contents: \(wrong.prefix(10))")
    }

    @Test("msix=off test=blk: the completion arrives as legacy INTx through the PIC, lowered by the ISR read")
    func blkINTx() throws {
        let image = try makeImage(sectors: 64)
        defer { try? FileManager.default.removeItem(at: image) }
        let r = try bootMinimal(["msix=off", "test=blk"], options: ["--block=\(image.path)", "--verbose"])
        expectPasses(r, ["blk-init", "blk-intx", "blk-read", "blk-write", "blk-readback", "blk-flush"])
        let report = r.stderr.split(separator: "\n").first { $0.hasPrefix("swiftvmm: virtio-blk vda:") } ?? ""
        #expect(report.contains("(0 MSI-X") && !report.contains(" 0 INTx"), "\(report)")
    }

    @Test("two disks, the second read-only: test=blk on vda, test=blk-ro on vdb; vdb's file unchanged")
    func blkReadOnly() throws {
        let rw = try makeImage(sectors: 64), ro = try makeImage(sectors: 64)
        defer { try? FileManager.default.removeItem(at: rw); try? FileManager.default.removeItem(at: ro) }
        let before = try Data(contentsOf: ro)
        let r = try bootMinimal(["test=blk", "test=blk-ro"], options: ["--block=\(rw.path)", "--block=\(ro.path),ro"])
        expectPasses(r, ["blk-write", "blk-flush", "blk-ro-feature", "blk-ro-read", "blk-ro-write", "blk-ro-unchanged"])
        #expect(try Data(contentsOf: ro) == before)
        #expect(try Data(contentsOf: rw) != before)
    }

    @Test("test=rng: random bytes from the host")
    func rng() throws {
        expectPasses(try bootMinimal(["test=rng"], options: ["--rng"]), ["rng-read"])
    }

    @Test("test=virtio-race with --cpus 2: queue enable on one vCPU against resets on the other; no crash or deadlock, a queue not enabled again is left alone, the disk works after")
    func enableRacesResetFromTwoVCPUs() throws {
        let image = try makeImage(sectors: 64)
        defer { try? FileManager.default.removeItem(at: image) }
        let r = try bootMinimal(["test=virtio-race"], options: ["--cpus", "2", "--block=\(image.path)", "--timeout=60s"])
        expectPasses(r, ["race-second-vcpu", "race-rounds", "race-reset-holds", "race-recovered"])
        #expect(r.status == 0, "exit \(r.status): \(r.stderr.suffix(2000))")
        #expect(r.lines.contains("race: queue_enable reads 0, used index 0 -> 0, status byte 0xff"), "\(r.stdout)")
    }

    @Test("test=virtio-abuse: the VMM survives every bad request, reports it, the guest sees IOERR or NEEDS_RESET")
    func abuse() throws {
        let image = try makeImage(sectors: 64)
        defer { try? FileManager.default.removeItem(at: image) }
        let before = try Data(contentsOf: image)
        let r = try bootMinimal(["test=virtio-abuse"], options: ["--block=\(image.path)", "--rng", "--trace=guest-errors", "--verbose"])
        expectPasses(r, ["abuse-outside-ram", "abuse-loop", "abuse-oversized", "abuse-past-end", "abuse-ro-status",
                         "abuse-hypercall-page", "abuse-pci-hole", "abuse-msix-vector", "abuse-bar-overlap", "abuse-recovered"])
        // A hundred collisions: refused, counted, said once.
        #expect(r.stderr.components(separatedBy: "queue kicks will exit to user space (said once)").count == 2, "\(r.stderr)")
        #expect(r.stderr.range(of: #"BAR 0 moved onto a taken address [1-9][0-9]{2,} times"#, options: .regularExpression) != nil, "\(r.stderr)")
        #expect(r.stderr.contains("is read-only memory"), "\(r.stderr)")
        #expect(r.lines.contains { $0.hasPrefix("abuse: ") && $0.contains("DEVICE_NEEDS_RESET") })
        #expect(r.stderr.contains("guest error: queue 0: chain from head"), "\(r.stderr)")
        #expect(r.stderr.contains("is not in guest RAM"))
        #expect(r.stderr.contains("virtio-blk vda:") && r.stderr.contains("guest errors"))
        let disk = r.stderr.split(separator: "\n").first { $0.hasPrefix("swiftvmm: virtio-blk vda: at exit") } ?? ""
        #expect(disk.contains("guest errors") && !disk.contains(" 0 guest errors"), "\(disk)")
        #expect(try Data(contentsOf: image) == before)
    }

    @Test("--help shows --block, --tunnet and --rng")
    func help() throws {
        let r = try runVMM(["--help"])
        #expect(r.status == 0)
        for option in ["--block <file[,ro]>", "--tunnet <name[,mac=xx:xx:xx:xx:xx:xx]>", "--rng"] {
            #expect(r.stdout.contains(option), "\(option) missing from --help:\n\(r.stdout)")
        }
    }

    @Test("a missing block image exits 66 with the file named; a bad --tunnet MAC or tap name is a usage error")
    func badOptions() throws {
        let r = try bootMinimal(["hello"], options: ["--block=/nonexistent/disk.img"])
        #expect(r.status == 66)
        #expect(r.stderr.contains("/nonexistent/disk.img") && r.stderr.contains("No such file"), "\(r.stderr)")
        let m = try bootMinimal(["hello"], options: ["--tunnet=tap0,mac=01:02:03:04:05:06"])
        #expect(m.status == 64, "\(m.stderr)")
        #expect(m.stderr.contains("--tunnet"))
        let n = try bootMinimal(["hello"], options: ["--tunnet=" + String(repeating: "a", count: 100)])
        #expect(n.status == 64, "\(n.stderr)")
        #expect(n.stderr.contains("must be 1 to 15 characters"), "\(n.stderr)")
    }

    /// A network namespace with tap0 at 10.0.2.2/24, removed afterwards.
    final class Namespace {
        let name = "swiftvmm-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        init(tap: String?) throws {
            try Self.ip(["netns", "add", name])
            if let tap {
                try Self.ip(["-n", name, "tuntap", "add", "dev", tap, "mode", "tap"])
                try Self.ip(["-n", name, "addr", "add", "10.0.2.2/24", "dev", tap])
                try Self.ip(["-n", name, "link", "set", tap, "up"])
            }
        }
        deinit { try? Self.ip(["netns", "del", name]) }

        /// A sender inside the namespace that floods `tap` with 1514-byte broadcast frames
        /// (Ethernet type 0x88b5), `burst` at a time with `pause` seconds between, until it is
        /// killed: with SIGKILL, as the child inherits the test thread's blocked signals,
        /// SIGTERM among them.
        func floodTap(_ tap: String, burst: Int, pause: Double) throws -> Process {
            let sender = Process()
            sender.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
            sender.arguments = ["netns", "exec", name, "python3", "-c", """
                import socket, time
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
                s.bind(("\(tap)", 0))
                frame = b"\\xff" * 6 + bytes.fromhex("020000000001") + b"\\x88\\xb5" + bytes(1500)
                while True:
                    for _ in range(\(burst)):
                        try: s.send(frame)
                        except OSError: pass
                    time.sleep(\(pause))
                """]
            try sender.run()
            return sender
        }

        static func ip(_ args: [String]) throws {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
            p.arguments = args
            let err = Pipe()
            p.standardError = err
            try p.run()
            p.waitUntilExit()
            let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            if p.terminationStatus != 0 {
                Issue.record("ip \(args.joined(separator: " ")) failed: \(message) (the net tests need root and iproute2)")
                throw CancellationError()
            }
        }
    }

    @Test("test=net: ARP and ping through a tap in a fresh network namespace; the given MAC is used")
    func net() throws {
        try requireKVMAndGuest()
        let ns = try Namespace(tap: "tap0")
        let r = try runVMM(["--verbose", "32m", Repo.minimalGuest, "test=net", "--tunnet=tap0,mac=52:54:00:12:34:56"],
                           launcher: ["/usr/sbin/ip", "netns", "exec", ns.name])
        expectPasses(r, ["net-mac", "net-arp", "net-ping"])
        #expect(r.lines.contains("net: mac 52:54:00:12:34:56"))
        #expect(r.stderr.contains("virtio-net tap0:") && !r.stderr.contains("frames 0 in"), "\(r.stderr)")
    }

    @Test("test=net-rx-tiny: MRG_RXBUF buffers too small for a flood of 1514-byte frames: dropped and counted when the whole ring cannot hold one, waited for when it can, then spread over 12 buffers")
    func netReceiveTinyBuffers() throws {
        try requireKVMAndGuest()
        let ns = try Namespace(tap: "tap0")
        let sender = try ns.floodTap("tap0", burst: 16, pause: 0.005)
        defer { kill(sender.processIdentifier, SIGKILL); sender.waitUntilExit() }
        let r = try runVMM(["--verbose", "--trace=guest-errors", "--timeout=60s", "32m", Repo.minimalGuest, "test=net-rx-tiny", "--tunnet=tap0"],
                           launcher: ["/usr/sbin/ip", "netns", "exec", ns.name])
        expectPasses(r, ["net-rx-tiny-drop", "net-rx-tiny-wait", "net-rx-tiny-merge"])
        #expect(r.lines.contains("net: reset after the drops"), "\(r.stdout)")
        #expect(r.stderr.contains("frame is larger than the whole receive ring can hold"), "\(r.stderr.suffix(3000))")
        #expect(r.stderr.range(of: #"virtio-net tap0: .* / [1-9][0-9]* dropped"#, options: .regularExpression) != nil,
                "\(r.stderr.suffix(3000))")
        #expect(sender.isRunning, "the frame sender died early")
    }

    @Test("--tunnet creates a missing tap (inside a namespace) and the guest sees a generated MAC")
    func netCreatesTap() throws {
        try requireKVMAndGuest()
        let ns = try Namespace(tap: nil)
        let r = try runVMM(["32m", Repo.minimalGuest, "test=net", "--tunnet=made0"],
                           launcher: ["/usr/sbin/ip", "netns", "exec", ns.name])
        // Nobody answers on a fresh tap: the MAC check passes, ARP cannot.
        #expect(r.lines.contains("PASS net-mac"), "\(r.stdout)\n\(r.stderr)")
        let mac = r.lines.first { $0.hasPrefix("net: mac ") }
        let first = mac.flatMap { UInt8($0.dropFirst(9).prefix(2), radix: 16) }
        #expect(first.map { $0 & 2 != 0 && $0 & 1 == 0 } == true, "\(String(describing: mac))")
    }
}
