import ArgumentParser
import Boot
import Glibc
import Lifecycle
import Machine
import Memory

/// `swiftvmm [options] <memory> <kernel> [guest command line...]`, lguest-style.
///
/// swiftvmm's options may come anywhere, also after the kernel, as users type them:
/// `swiftvmm 64m vmlinux --initrd=initrd.img root=/dev/vda`. Every other word is part of the
/// guest's command line, and `--` ends swiftvmm's options: everything after it goes to the
/// guest verbatim, including words that start with '-'.
struct SwiftVMM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Boot a kernel on KVM with a serial console, in the spirit of lguest's launcher.",
        usage: """
        swiftvmm [options] <memory> <kernel> [guest command line...] [-- guest words...]
          swiftvmm inspect <kernel> [--json]
        """,
        discussion: """
        <memory> is the guest's RAM: 64m, 1g, 512k, or a bare number of MiB. <kernel> is an ELF \
        kernel (a Linux vmlinux, 64- or 32-bit, or the bundled guests/minimal/build/minimal.elf) \
        or a Linux bzImage; docs/boot.md has the entry paths and memory layout. Every word \
        after them that is not a swiftvmm option becomes the guest's command line; words after \
        '--' always do. The guest's serial console (COM1) is this terminal: its output goes to \
        stdout and your keys go to the guest (three Ctrl-C within a second end the VM).

        EXAMPLES:
          swiftvmm 32m guests/minimal/build/minimal.elf hello
          swiftvmm 32m guests/minimal/build/minimal.elf exit=7; echo $?      # prints 7
          swiftvmm --trace=hypercalls 32m guests/minimal/build/minimal.elf test=hypercalls
          swiftvmm 64m vmlinux --initrd=initrd.img root=/dev/vda
          swiftvmm inspect bzImage

        EXIT STATUS:
          0–255  the guest's own status (exit hypercall); 0 also for a clean shutdown or reboot
          64     usage error: bad option, memory size, or command line too long
          65     the kernel image is malformed or does not fit in guest RAM
          66     the kernel file is missing or unreadable
          69     KVM is unavailable (/dev/kvm missing or lacking a required capability)
          70     swiftvmm itself failed (a host resource or KVM call refused)
          71     guest fault: triple fault, instruction KVM cannot emulate, internal error, failed entry
          130    interrupted (SIGINT, or three Ctrl-C on the console); 143 terminated (SIGTERM)
        Codes 64 and above can also be a guest's own status: guests that want unmistakable \
        results exit with statuses below 64.
        """,
        version: SwiftVMMVersion.string
    )

    @Option(help: "Number of vCPUs (at most what this host's KVM allows).")
    var cpus: Int = 1

    @Option(help: ArgumentHelp(
        "Trace to stderr: exits, io, hypercalls, guest-errors, or all (comma-separated; repeatable).",
        valueName: "what"))
    var trace: [String] = []

    @Flag(name: .shortAndLong, help: "Describe the machine at start and print counters at the end (stderr).")
    var verbose = false

    @Option(help: ArgumentHelp("Initial RAM disk, placed page-aligned at the top of low memory.", valueName: "file"))
    var initrd: String?

    @Option(help: ArgumentHelp(
        "How to enter the kernel: auto (PVH when the ELF has the note, else 64-bit), pvh, linux64, or linux32.",
        valueName: "mode"))
    var entry: String = "auto"

    @Flag(name: .customLong("no-serial-console"),
          help: "Do not add console=ttyS0 to a Linux kernel's command line when it names no console.")
    var noSerialConsole = false

    @Flag(name: .customLong("pvm-host"), help: ArgumentHelp(
        "For PVM hosts (KVM without VT-x/AMD-V, guest kernel code emulated): hide CMPXCHG16B and the KVM paravirtual features that use vmcall (PV_UNHALT, PV_SEND_IPI, PV_SCHED_YIELD, HC_MAP_GPA_RANGE), so unmodified Linux kernels get further. See docs/boot.md."))
    var pvmHost = false

    @Argument(help: ArgumentHelp("Guest RAM: 64m, 1g, 512k, or a number of MiB.", valueName: "memory"))
    var memory: String

    @Argument(help: ArgumentHelp("The kernel: an ELF (vmlinux, minimal.elf) or a Linux bzImage.", valueName: "kernel"))
    var kernel: String

    @Argument(parsing: .allUnrecognized, help: ArgumentHelp("The guest's command line.", valueName: "guest words"))
    var guestWords: [String] = []

    /// Words after `--`, filled in by `main` before parsing.
    var passthrough: [String] = []

    func validate() throws {
        if let unknown = guestWords.first(where: { $0.hasPrefix("-") && $0.count > 1 }) {
            throw ValidationError("unknown option '\(unknown)'. Guest words that start with '-' go after '--'.")
        }
        guard cpus >= 1 else { throw ValidationError("--cpus must be at least 1") }
        if EntryChoice(rawValue: entry) == nil {
            throw ValidationError("unknown --entry value '\(entry)'; use auto, pvh, linux64, or linux32")
        }
        for t in trace where TraceOptions(parsing: t) == nil {
            throw ValidationError("unknown --trace value '\(t)'; use exits, io, hypercalls, guest-errors, or all")
        }
    }

    var traceOptions: TraceOptions {
        trace.reduce(into: TraceOptions()) { $0.formUnion(TraceOptions(parsing: $1) ?? []) }
    }

    func run() throws {
        let size: MemorySize
        do {
            size = try MemorySize(parsing: memory)
        } catch {
            fail(error.description, code: ExitStatus.usage)
        }
        var config = MachineConfig(memory: size, kernelPath: kernel,
                                   commandLine: (guestWords + passthrough).joined(separator: " "))
        config.cpus = cpus
        config.trace = traceOptions
        config.verbose = verbose
        config.initrdPath = initrd
        config.entry = EntryChoice(rawValue: entry) ?? .auto
        config.addSerialConsole = !noSerialConsole
        config.pvmHost = pvmHost

        // SIGINT/SIGTERM/SIGHUP end the run cleanly (terminal restored, exit code reported):
        // block them everywhere and take them on one thread with sigwait.
        var signals = sigset_t()
        sigemptyset(&signals)
        for s in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&signals, s) }
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        let machine: GuestMachine
        do {
            machine = try GuestMachine(config: config)
        } catch {
            fail(error.description, code: error.exitCode)
        }
        let waitSet = signals
        _ = HostThread.start(name: "signals") {
            var set = waitSet
            var sig: Int32 = 0
            if sigwait(&set, &sig) == 0 { machine.requestStop(.interrupted(signal: sig)) }
        }
        if verbose {
            Diagnostics.line("swiftvmm: \(size) RAM, \(cpus) vCPU(s), kernel \(kernel) (\(machine.kernel.format), entry \(machine.kernel.entry.name)), command line \"\(machine.kernel.commandLine)\"")
            if let r = machine.kernel.initrd {
                Diagnostics.line("swiftvmm: initrd \(initrd ?? "") at \(Diagnostics.hex(r.lowerBound))-\(Diagnostics.hex(r.upperBound - 1)) (\(r.count) bytes)")
            }
            for e in machine.kernel.e820 { Diagnostics.line("swiftvmm: e820: \(e)") }
        }
        let (outcome, stats) = machine.run()
        switch outcome {
        case .guestFault(_, let report):
            Diagnostics.line(report)
        case .vmmError(let message):
            Diagnostics.line("swiftvmm: error: \(message)")
        case .interrupted:
            Diagnostics.line("swiftvmm: \(outcome.summary)")
        case .guestExit, .shutdown, .reboot:
            break
        }
        if verbose {
            Diagnostics.line("swiftvmm: \(outcome.summary); exit code \(outcome.exitCode)")
            let exits = stats.exitsByReason.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
            Diagnostics.line("swiftvmm: exits: \(exits.joined(separator: " "))")
            let calls = stats.hypercallsByNumber.sorted { $0.key < $1.key }.map { "#\($0.key)=\($0.value)" }
            Diagnostics.line("swiftvmm: hypercalls: \(calls.isEmpty ? "none" : calls.joined(separator: " "))")
            for (name, c) in stats.deviceAccesses.sorted(by: { $0.key < $1.key }) {
                Diagnostics.line("swiftvmm: \(name): \(c.reads) reads, \(c.writes) writes")
            }
            Diagnostics.line("swiftvmm: unclaimed accesses: \(stats.unclaimedPortAccesses) port, \(stats.unclaimedMMIOAccesses) MMIO")
        }
        Glibc.exit(outcome.exitCode)
    }
}

func fail(_ message: String, code: Int32) -> Never {
    Diagnostics.line("swiftvmm: \(message)")
    Glibc.exit(code)
}
