import Foundation
import Testing

/// One test per row of the exit-code contract (README, `--help`), each produced by the real
/// guest on the real VMM, plus the console-driven decisions and the report.
@Suite("Exit-code contract and CI features")
struct ExitContractTests {
    @Test("the guest's own status passes through (exit hypercall)")
    func guestStatus() throws {
        #expect(try bootMinimal(["exit=42"]).status == 42)
    }

    @Test("the VM's teardown left to a helper: the status is ours, the output ends, the helper goes away")
    func teardownHelper() throws {
        // The marker names this run's processes in /proc/*/cmdline (the helper shares our
        // memory, so it shows our command line); the guest ignores words it does not know.
        let marker = "teardown-\(UUID().uuidString)"
        let r = try bootMinimal(["hello", "exit=5", marker])
        #expect(r.status == 5)
        #expect(r.stdout.contains("Hello from the minimal guest"))
        // runProcess read both pipes to their end, so the helper let go of them at once; it
        // must also be gone soon after (it exits once we have, having torn the VM down).
        func remaining() -> [String] {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
            return entries.filter { pid in
                guard Int(pid) != nil, let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
                return String(decoding: data, as: UTF8.self).contains(marker)
            }
        }
        var left = remaining()
        for _ in 0..<200 where !left.isEmpty {
            usleep(10_000)
            left = remaining()
        }
        #expect(left.isEmpty, "processes still running 2 s after the VMM exited: \(left)")
    }

    @Test("debug-exit: a write of V exits with (V << 1) | 1, on the default or a given port")
    func debugExit() throws {
        #expect(try bootMinimal(["debugexit=5"], options: ["--debug-exit"]).status == 11)
        #expect(try bootMinimal(["debugexit=0"], options: ["--debug-exit=0xf4"]).status == 1)
        // Without the option the port is unclaimed: the write is ignored and the guest goes on.
        #expect(try bootMinimal(["debugexit=5", "exit=9"]).status == 9)
        // Elsewhere than the guest writes: ignored too.
        #expect(try bootMinimal(["debugexit=5", "exit=9"], options: ["--debug-exit=0x500"]).status == 9)
    }

    @Test("a reboot through the keyboard controller ends the run with 0")
    func reboot() throws {
        let r = try bootMinimal(["say=rebooting", "reboot", "exit=9"], options: ["--timeout=60s"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(!r.stdout.contains("still here"))
    }

    @Test("Linux's power-off message ends the run with 0 instead of waiting on a halted CPU")
    func powerOff() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvmm-poweroff-\(UUID()).json")
        defer { try? FileManager.default.removeItem(at: file) }
        let r = try bootMinimal(["poweroff"], options: ["--timeout=60s", "--report=\(file.path)"])
        #expect(r.status == 0, "\(r.stderr)")
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: file)) as? [String: Any]
        #expect(json?["outcome"] as? String == "shutdown")
    }

    @Test("a kernel panic on the console ends the run with 72 at the panic's last line, its stack trace kept; the option turns it off")
    func panic() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvmm-panic-\(UUID()).json")
        defer { try? FileManager.default.removeItem(at: file) }
        let r = try bootMinimal(["panic"], options: ["--timeout=60s", "--report=\(file.path)"])
        let json = (try? JSONSerialization.jsonObject(with: Data(contentsOf: file))) as? [String: Any] ?? [:]
        #expect(r.status == 72, "\(r.stderr)")
        #expect(r.stderr.contains("kernel panic: Kernel panic - not syncing: minimal guest panics on request"))
        #expect(r.stdout.contains("---[ end Kernel panic - not syncing: minimal guest panics on request ]---"))
        // The stack Linux prints after the panic line made it into the report, symbolized.
        let frames = ((json["oops"] as? [String: Any])?["frames"] as? [[String: Any]]) ?? []
        #expect(frames.map { $0["symbol"] as? String } == ["panic_on_request", "run_ci_word"], "\(frames)")
        #expect((frames.first?["file"] as? String)?.hasSuffix("guests/minimal/ci.c") == true, "\(frames)")
        // A console cut short after the panic line: the run still ends, panicGrace later,
        // and a reset during that time does not change the outcome.
        let cut = try bootMinimal(["panic=cut", "hang=spin"], options: ["--timeout=60s"])
        #expect(cut.status == 72, "\(cut.stderr)")
        let reset = try bootMinimal(["panic=cut", "reboot"], options: ["--timeout=60s"])
        #expect(reset.status == 72, "\(reset.stderr)")
        let off = try bootMinimal(["panic"], options: ["--no-panic-detection", "--timeout=1s"])
        #expect(off.status == 124)
    }

    @Test("--timeout stops a spinning guest and a halted one with 124", arguments: ["hang=spin", "hang=hlt"])
    func timeout(mode: String) throws {
        let r = try bootMinimal(["say=before", mode], options: ["--timeout=1s"])
        #expect(r.status == 124, "\(r.stderr)")
        #expect(r.lines.contains("before"))
        #expect(r.stderr.contains("timed out after 1s"))
        #expect(r.stderr.contains("vCPU 0:"))           // registers of the stuck vCPU
        // Where interrupts stand, for a guest that waits for one forever: the UART, the PIC
        // pair (LINT0's ExtINT wiring), the IOAPIC and the local APIC.
        #expect(r.stderr.contains("swiftvmm: interrupts at the end of the run:"), "\(r.stderr)")
        #expect(r.stderr.contains("serial: IER=0x0 "), "\(r.stderr)")
        #expect(r.stderr.contains("PIC master: IRR="), "\(r.stderr)")
        #expect(r.stderr.contains("IOAPIC pins: "), "\(r.stderr)")
        #expect(r.stderr.contains("vCPU 0 local APIC: requested none; in service none; LVT0=0x700"), "\(r.stderr)")
    }

    @Test("--timeout with two vCPUs, one of them never started")
    func timeoutSMP() throws {
        let r = try bootMinimal(["hang=hlt"], options: ["--timeout=500ms", "--cpus=2"])
        #expect(r.status == 124, "\(r.stderr)")
    }

    @Test("SIGTERM, SIGINT and SIGHUP end a running guest cleanly with 143, 130 and 129",
          arguments: [(SIGTERM, Int32(143)), (SIGINT, Int32(130)), (SIGHUP, Int32(129))])
    func signals(signal: Int32, code: Int32) throws {
        try requireKVMAndGuest()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Repo.swiftvmm)
        process.arguments = ["--timeout=60s", "32m", Repo.minimalGuest, "say=running", "hang=spin"]
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // Wait until the guest runs (its line is on stdout), then signal swiftvmm.
        var seen = Data()
        let deadline = Date().addingTimeInterval(30)
        while !String(decoding: seen, as: UTF8.self).contains("running") && Date() < deadline {
            seen.append(out.fileHandleForReading.availableData)
        }
        kill(process.processIdentifier, signal)
        let stopBy = Date().addingTimeInterval(20)
        while process.isRunning && Date() < stopBy { usleep(10_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        #expect(process.terminationReason == .exit, "killed by a signal instead of exiting")
        #expect(process.terminationStatus == code)
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(stderr.contains("interrupted by signal \(signal)"), "\(stderr)")
    }

    @Test("guest faults the VMM cannot continue from: triple fault and emulation failure give 71")
    func guestFaults() throws {
        let triple = try bootMinimal(["fault=triple"])
        #expect(triple.status == 71)
        let emul = try bootMinimal(["fault=emulation"])
        #expect(emul.status == 71, "\(emul.stderr)")
        #expect(emul.stderr.contains("instruction emulation failed (KVM_EXIT_INTERNAL_ERROR, suberror 1)"))
        // popcnt (%rax) with a REX.W prefix: f3 48 0f b8 00
        #expect(emul.stderr.contains("instruction bytes at RIP: f3 48 0f b8 00"), "\(emul.stderr)")
    }

    @Test("--expect: exit 0 as soon as all patterns matched in order, without waiting for the guest")
    func expectInOrder() throws {
        let r = try bootMinimal(["say=alpha", "say=beta", "say=gamma", "hang=spin"],
                                options: ["--expect=al.ha", "--expect=^gamma$", "--timeout=30s"])
        #expect(r.status == 0, "\(r.stderr)")
        // Patterns match in order: gamma printed before alpha does not count; the guest hangs.
        let wrongOrder = try bootMinimal(["say=gamma", "say=alpha", "hang=spin"],
                                         options: ["--expect=alpha", "--expect=gamma", "--timeout=1s"])
        #expect(wrongOrder.status == 124)
    }

    @Test("--expect unmet when the guest ends: 74, whatever the guest's status")
    func expectUnmet() throws {
        let r = try bootMinimal(["say=alpha", "exit=0"], options: ["--expect=alpha", "--expect=omega"])
        #expect(r.status == 74)
        #expect(r.stderr.contains("before --expect /omega/ matched"), "\(r.stderr)")
    }

    @Test("--fail-on: exit 73 as soon as it matches, even before pending --expect patterns")
    func failOn() throws {
        let r = try bootMinimal(["say=starting", "say=ERROR:_disk_gone", "say=ready", "exit=0"],
                                options: ["--fail-on=ERROR:", "--expect=ready"])
        #expect(r.status == 73, "\(r.stderr)")
        #expect(!r.lines.contains("ready"))             // the VM stopped right away
    }

    @Test("bad patterns and durations are usage errors")
    func badOptions() throws {
        #expect(try bootMinimal(["hello"], options: ["--expect=("]).status == 64)
        #expect(try bootMinimal(["hello"], options: ["--timeout=soon"]).status == 64)
        #expect(try bootMinimal(["hello"], options: ["--debug-exit=0x10000"]).status == 64)
        #expect(try bootMinimal(["hello"], options: ["--report=/nonexistent/dir/r.json"]).status == 64)
    }

    @Test("--console-log copies the console; --quiet keeps stdout clean")
    func consoleLog() throws {
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvmm-console-\(getpid()).log")
        defer { try? FileManager.default.removeItem(at: log) }
        let r = try bootMinimal(["hello", "say=second"], options: ["--console-log=\(log.path)", "--quiet"])
        #expect(r.status == 0)
        #expect(r.stdout.isEmpty)
        #expect(try String(contentsOf: log, encoding: .utf8) == "Hello from the minimal guest\nsecond\n")
    }
}

/// The JSON report, checked against the fields docs/ci.md documents.
@Suite("Run reports")
struct RunReportTests {
    func report(_ words: [String], options: [String]) throws -> (RunResult, [String: Any]) {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvmm-report-\(UUID()).json")
        defer { try? FileManager.default.removeItem(at: file) }
        let r = try bootMinimal(words, options: options + ["--report=\(file.path)"])
        let data = try Data(contentsOf: file)
        let json = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        return (r, json)
    }

    /// The top-level fields, in the order docs/ci.md lists them.
    static let documentedFields = ["swiftvmm", "report_version", "outcome", "exit_code", "reason", "guest_status",
                                   "matched", "expect", "timings_ms", "config", "counts", "crash", "oops"]

    @Test("docs/ci.md documents exactly the fields the report has")
    func documented() throws {
        let doc = try String(contentsOf: Repo.root.appendingPathComponent("docs/ci.md"), encoding: .utf8)
        for field in Self.documentedFields { #expect(doc.contains("`\(field)`"), "docs/ci.md lacks \(field)") }
        let (_, json) = try report(["exit=3"], options: [])
        #expect(Set(json.keys) == Set(Self.documentedFields))
    }

    @Test("a guest exit: outcome, status, timings, config and counts")
    func guestExit() throws {
        let (r, json) = try report(["hello", "bootdone", "test=hypercalls"], options: ["--expect=Hello"])
        #expect(r.status == 0)
        #expect(json["outcome"] as? String == "expect-matched")
        #expect(json["exit_code"] as? Int == 0)
        let timings = try #require(json["timings_ms"] as? [String: Any])
        let entry = try #require(timings["first_guest_entry"] as? Double)
        let firstByte = try #require(timings["first_console_byte"] as? Double)
        let end = try #require(timings["end"] as? Double)
        #expect(entry > 0 && entry <= firstByte && firstByte <= end)
        let expects = try #require(timings["expect"] as? [[String: Any]])
        #expect(expects.first?["pattern"] as? String == "Hello")
        let config = try #require(json["config"] as? [String: Any])
        #expect(config["memory_bytes"] as? Int == 32 << 20)
        #expect(config["command_line"] as? String == "hello bootdone test=hypercalls")
        let counts = try #require(json["counts"] as? [String: Any])
        let exits = try #require(counts["exits"] as? [String: Int])
        #expect((exits["KVM_EXIT_IO"] ?? 0) > 10)
        let devices = try #require(counts["devices"] as? [String: [String: Int]])
        #expect((devices["serial0 (COM1)"]?["writes"] ?? 0) > 10)
        #expect(json["crash"] is NSNull)
    }

    @Test("the boot-complete marker (123 to port 0x3f0) is reported with its time")
    func bootMarker() throws {
        let (_, json) = try report(["bootdone", "exit=0"], options: [])
        let timings = try #require(json["timings_ms"] as? [String: Any])
        #expect(timings["boot_complete"] is Double)
        let (_, without) = try report(["exit=0"], options: [])
        #expect((without["timings_ms"] as? [String: Any])?["boot_complete"] is NSNull)
    }

    @Test("hypercalls are counted by number; guest errors are counted")
    func counts() throws {
        let (_, json) = try report(["test=hypercalls"], options: [])
        let counts = try #require(json["counts"] as? [String: Any])
        let calls = try #require(counts["hypercalls"] as? [String: Int])
        #expect(calls["0"] == 1)          // noop
        #expect(calls["100"] == 1)        // unknown numbers are counted too
        #expect(calls["6"] == 2)          // checksum, twice
        #expect((counts["guest_errors"] as? Int ?? 0) >= 1)   // the write to the read-only page
    }

    @Test("a fault: the crash section has every vCPU's registers and a symbolized stack")
    func crash() throws {
        let (r, json) = try report(["fault=triple"], options: ["--cpus=2"])
        #expect(r.status == 71)
        #expect(json["outcome"] as? String == "guest-fault")
        let crash = try #require(json["crash"] as? [String: Any])
        #expect((crash["summary"] as? String ?? "").contains("triple fault"))
        let vcpus = try #require(crash["vcpus"] as? [[String: Any]])
        #expect(vcpus.count == 2)
        let regs = try #require(vcpus.first?["regs"] as? [String: String])
        #expect(regs["rip"]?.hasPrefix("0x") == true)
        let sregs = try #require(vcpus.first?["sregs"] as? [String: Any])
        #expect(sregs["efer"] as? String == "0x500")
        let stack = try #require(vcpus.first?["stack"] as? [String])
        #expect(stack.first?.hasPrefix("fault_triple+0x") == true, "\(stack)")
        #expect(stack.contains { $0.hasPrefix("kmain+0x") }, "\(stack)")
        #expect(r.stderr.contains("fault_triple+0x"))
    }

    @Test("an oops on the console is resolved to file:line through the guest's DWARF")
    func oops() throws {
        let (r, json) = try report(["oops", "exit=0"], options: [])
        #expect(r.status == 0)
        let oops = try #require(json["oops"] as? [String: Any])
        let frames = try #require(oops["frames"] as? [[String: Any]])
        #expect(frames.map { $0["symbol"] as? String } == ["oops_inner", "oops_middle", "oops_outer"])
        let source = try String(contentsOf: Repo.root.appendingPathComponent("guests/minimal/ci.c"), encoding: .utf8)
            .split(separator: "\n", omittingEmptySubsequences: false)
        // Each frame must land on the line in ci.c that does what that frame was doing.
        let expectations = ["print(\"BUG:", "oops_inner(", "oops_middle()"]
        for (frame, text) in zip(frames, expectations) {
            let file = try #require(frame["file"] as? String)
            #expect(file.hasSuffix("guests/minimal/ci.c"))
            let line = try #require(frame["line"] as? Int)
            #expect(source[line - 1].contains(text), "line \(line): \(source[line - 1])")
        }
        #expect(r.stderr.contains("ci.c:"))
    }
}

/// The trace switches: what each prints for a known sequence of guest actions.
@Suite("Tracing")
struct TraceTests {
    @Test("--trace=io names the device behind each access, and unclaimed ones")
    func io() throws {
        let r = try bootMinimal(["say=x", "debugexit=3", "exit=0"], options: ["--trace=io"])
        #expect(r.status == 0)
        let lines = r.stderr.split(separator: "\n")
        // The 'x' going out through THR, then the debug-exit write nobody claims (no --debug-exit).
        #expect(lines.contains { $0.contains("out 0x03f8 size=1 value=0x78 -> serial0 (COM1)") }, "\(r.stderr)")
        #expect(lines.contains { $0.contains("out 0x00f4 size=4 value=0x3 -> unclaimed") })
        #expect(lines.contains { $0.contains("in  0x03fd size=1 value=0x60 -> serial0 (COM1)") })
    }

    @Test("--trace=exits shows every exit with its reason and port")
    func exits() throws {
        let r = try bootMinimal(["exit=0"], options: ["--trace=exits"])
        #expect(r.status == 0)
        #expect(r.stderr.contains("vcpu0 exit KVM_EXIT_IO port=0x3f8 out size=1") || r.stderr.contains("vcpu0 exit KVM_EXIT_IO port=0xe0 out size=4"),
                "\(r.stderr)")
        #expect(r.stderr.contains("exit KVM_EXIT_IO port=0xe0 out size=4"))   // the exit hypercall
    }

    @Test("--trace=guest-errors reports a write to the read-only hypercall page")
    func guestErrors() throws {
        let r = try bootMinimal(["test=hypercalls"], options: ["--trace=guest-errors"])
        #expect(r.status == 0)
        #expect(r.stderr.contains("write to read-only guest memory at 0x2000"), "\(r.stderr)")
    }

    @Test("without --trace, nothing is printed on stderr for a clean run")
    func quietByDefault() throws {
        let r = try bootMinimal(["test=hypercalls"])
        #expect(r.status == 0)
        #expect(r.stderr.isEmpty, "\(r.stderr)")
    }
}

