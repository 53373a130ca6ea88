import Foundation
import Testing

/// End-to-end: the real swiftvmm binary boots the real bundled guest on /dev/kvm.
@Suite("Booting the minimal guest")
struct MinimalGuestBootTests {
    @Test("hello prints the greeting and exits 0")
    func hello() throws {
        let r = try bootMinimal(["hello"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.lines.contains("Hello from the minimal guest"))
    }

    @Test("exit=N becomes swiftvmm's exit status", arguments: [0, 1, 7, 42, 128, 255])
    func exitStatus(status: Int) throws {
        let r = try bootMinimal(["exit=\(status)"])
        #expect(r.status == Int32(status), "stderr: \(r.stderr)")
    }

    @Test("test=serial: every UART check passes, including the IRQ 4 interrupt")
    func serial() throws {
        let r = try bootMinimal(["test=serial"])
        let passes = r.lines.filter { $0.hasPrefix("PASS serial-") }
        let failures = r.lines.filter { $0.hasPrefix("FAIL") }
        #expect(failures.isEmpty, "\(failures)")
        #expect(passes.contains("PASS serial-irq"))
        #expect(passes.count >= 8, "\(r.stdout)")
        #expect(r.status == 0)
    }

    @Test("test=hypercalls: every hypercall behaves as documented, with registers synced in kvm_run or through ioctls",
          arguments: [false, true])
    func hypercalls(throughIoctls: Bool) throws {
        try requireKVMAndGuest()
        let r = try runProcess(Repo.swiftvmm, ["32m", Repo.minimalGuest, "test=hypercalls"],
                               environment: throughIoctls ? ["SWIFTVMM_NO_SYNC_REGS": "1"] : nil)
        let failures = r.lines.filter { $0.hasPrefix("FAIL") }
        #expect(failures.isEmpty, "\(failures)")
        for name in ["info", "noop", "version", "time_ns", "random", "console_write", "console_write-efault",
                     "console_write-einval", "enosys", "readonly"] {
            #expect(r.lines.contains("PASS hypercall-\(name)"), "missing PASS hypercall-\(name) in:\n\(r.stdout)")
        }
        #expect(r.status == 0)
    }

    @Test("stdin reaches the guest through the UART's receive interrupt")
    func echo() throws {
        let r = try bootMinimal(["echo"], input: "ping from the host, typed ahead of the guest\n")
        #expect(r.lines.contains("echo: ping from the host, typed ahead of the guest"), "\(r.stdout)")
        #expect(r.status == 0)
    }

    @Test("a fault the guest handles: message and status 3, no hang", arguments: ["ud", "pf", "gp"])
    func handledFault(kind: String) throws {
        let r = try bootMinimal(["fault=\(kind)"])
        #expect(r.status == 3, "stdout: \(r.stdout) stderr: \(r.stderr)")
        #expect(r.lines.contains { $0.hasPrefix("FAULT: #\(kind.uppercased())") }, "\(r.stdout)")
    }

    @Test("a triple fault ends the VM with the guest-fault status and a report")
    func tripleFault() throws {
        let r = try bootMinimal(["fault=triple"])
        #expect(r.status == 71)
        #expect(r.stderr.contains("triple fault (KVM_EXIT_SHUTDOWN) on vCPU 0 at RIP 0x"), "\(r.stderr)")
        #expect(r.stderr.contains("rip=0x"))
        #expect(r.stderr.contains("cr3=0x"))
    }

    @Test("options may follow the kernel; words after -- go to the guest verbatim")
    func commandLineShapes() throws {
        let r = try bootMinimal(["hello", "--verbose", "--", "exit=5"])
        #expect(r.status == 5)
        #expect(r.lines.contains("Hello from the minimal guest"))
        #expect(r.stderr.contains("command line \"hello exit=5\""), "\(r.stderr)")
        let spaced = try bootMinimal(["--cpus", "1", "exit=9"])
        #expect(spaced.status == 9)
    }

    @Test("--trace=hypercalls shows each call with its name, arguments and result")
    func traceHypercalls() throws {
        let r = try bootMinimal(["test=hypercalls"], options: ["--trace=hypercalls"])
        #expect(r.status == 0)
        let traces = r.stderr.split(separator: "\n").filter { $0.contains("hypercall #") }
        #expect(traces.contains { $0.contains("#0 noop() = 0x0") }, "\(r.stderr)")
        #expect(traces.contains { $0.contains("#1 console_write(0x") && $0.hasSuffix(" ns]") })
        #expect(traces.contains { $0.contains("#100(unknown) = -38") })
        #expect(traces.contains { $0.contains("#2 exit(0x0) = (does not return)") })
    }

    @Test("--verbose counts exits and device accesses")
    func verboseCounters() throws {
        let r = try bootMinimal(["hello"], options: ["--verbose"])
        #expect(r.status == 0)
        #expect(r.stderr.contains("exits: KVM_EXIT_IO="), "\(r.stderr)")
        #expect(r.stderr.contains("serial0 (COM1):"))
    }

    @Test("two vCPUs: the application processor waits for SIPI, the guest still runs")
    func twoCPUs() throws {
        let r = try bootMinimal(["exit=4"], options: ["--cpus=2"])
        #expect(r.status == 4, "\(r.stderr)")
    }

    @Test("more guest RAM than 3 GiB is split around the PCI hole and still boots")
    func largeMemory() throws {
        let r = try bootMinimal(["hello"], memory: "4g")
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.lines.contains("Hello from the minimal guest"))
    }
}

/// Bad input: a clear one-line error and a documented exit code, never a crash or a hang.
@Suite("Rejecting bad input")
struct BadInputTests {
    static let badSizes: [(String, String)] = [
        ("0", "must not be zero"), ("abc", "is not a size"), ("6k", "whole number of 4 KiB pages"),
        ("1k", "4 KiB pages"), ("100000g", "more than this host has"), ("99999999999999999999g", "not a size"),
    ]

    @Test("memory sizes that cannot work", arguments: badSizes)
    func badMemory(size: String, message: String) throws {
        try requireKVMAndGuest()
        let r = try runVMM([size, Repo.minimalGuest, "hello"])
        #expect(r.status == 64, "\(size): \(r.stderr)")
        #expect(r.stderr.contains(message), "\(size): \(r.stderr)")
        #expect(r.stdout.isEmpty)
    }

    @Test("a missing kernel file")
    func missingKernel() throws {
        try requireKVMAndGuest()
        let r = try runVMM(["32m", "/nonexistent/vmlinux"])
        #expect(r.status == 66)
        #expect(r.stderr.contains("/nonexistent/vmlinux: No such file or directory"))
    }

    @Test("files that are not kernels")
    func notKernels() throws {
        try requireKVMAndGuest()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvmm-bad-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let text = dir.appendingPathComponent("notes.txt")
        try Data("just some text, not a kernel\n".utf8).write(to: text)
        let empty = dir.appendingPathComponent("empty")
        try Data().write(to: empty)
        // A real ELF cut short: its segments point past the end of the file.
        let guest = try Data(contentsOf: URL(fileURLWithPath: Repo.minimalGuest))
        let truncated = dir.appendingPathComponent("truncated.elf")
        try guest.prefix(2048).write(to: truncated)
        for (file, message) in [(text, "not a kernel image"), (empty, "empty"), (truncated, "past the end of the file")] {
            let r = try runVMM(["32m", file.path])
            #expect(r.status == 65, "\(file.lastPathComponent): \(r.stderr)")
            #expect(r.stderr.contains(message), "\(file.lastPathComponent): \(r.stderr)")
        }
        let r = try runVMM(["32m", dir.path])
        #expect(r.status == 66, "a directory: \(r.stderr)")
    }

    @Test("a kernel that does not fit in guest RAM")
    func kernelTooBig() throws {
        try requireKVMAndGuest()
        // minimal.elf loads at 1 MiB; 2 MiB of RAM leaves it room, so check the bound with a
        // command line instead: over the limit is a usage error.
        let long = String(repeating: "x", count: 5000)
        let r = try runVMM(["32m", Repo.minimalGuest, long])
        #expect(r.status == 64)
        #expect(r.stderr.contains("the guest command line is 5000 bytes"), "\(r.stderr)")
    }

    @Test("unknown options and too many vCPUs are usage errors")
    func usageErrors() throws {
        try requireKVMAndGuest()
        let unknown = try runVMM(["32m", Repo.minimalGuest, "--bogus"])
        #expect(unknown.status == 64)
        #expect(unknown.stderr.contains("unknown option '--bogus'"))
        let cpus = try runVMM(["--cpus=64", "32m", Repo.minimalGuest])
        #expect(cpus.status == 64)
        #expect(cpus.stderr.contains("64 vCPUs requested"), "\(cpus.stderr)")
        let trace = try runVMM(["--trace=everything", "32m", Repo.minimalGuest])
        #expect(trace.status == 64)
    }

    @Test("--help explains the arguments, an example and the exit codes")
    func help() throws {
        try requireKVMAndGuest()
        let r = try runVMM(["--help"])
        #expect(r.status == 0)
        for text in ["<memory>", "<kernel>", "EXAMPLES:", "EXIT STATUS:", "--cpus", "--trace", "minimal.elf hello"] {
            #expect(r.stdout.contains(text), "--help lacks \(text)")
        }
    }
}
