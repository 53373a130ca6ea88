// swiftvmm: the command line (swift-argument-parser). It turns flags into a MachineConfig,
// runs the machine, and ends with the exit code the run's outcome maps to; `inspect` reads a
// kernel file without running it.

import ArgumentParser
import Devices
import Glibc
import HostSupport
import KernelLoading
import Machine
import Memory
import RunControl

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
          swiftvmm --timeout=5m --expect='Run /init' --console-log=boot.log --report=boot.json \\
                   --quiet 128m vmlinux console=ttyS0
          swiftvmm 64m vmlinux --block=rootfs.ext4 --block=data.img,ro --tunnet=tap0 --rng root=/dev/vda

        DEVICES: virtio 1.x over PCI (bus 0, MSI-X): --block disks are vda, vdb, ... in order, \
        then the network device, then --rng, then --virtiofs shares. A missing or unreadable \
        --block file or shared directory exits with 66, a missing virtiofsd with 69; a \
        virtiofsd that fails or dies during the run ends it with 70.

        EXIT STATUS:
          0–255  the guest's own status (exit hypercall); 0 also for a clean shutdown or reboot,
                 and when every --expect pattern matched
          (V<<1)|1  the guest wrote V to the --debug-exit port (QEMU's isa-debug-exit)
          64     usage error: bad option, memory size, pattern, or command line too long
          65     the kernel image is malformed or does not fit in guest RAM
          66     the kernel file or a --block image is missing or unreadable
          69     KVM is unavailable (/dev/kvm missing or lacking a required capability)
          70     swiftvmm itself failed (a host resource or KVM call refused)
          71     guest fault: triple fault, instruction KVM cannot emulate, internal error, failed entry
          72     kernel panic seen on the console ('Kernel panic - not syncing')
          73     a --fail-on pattern matched
          74     the guest ended before every --expect pattern matched
          124    --timeout expired
          130    interrupted (SIGINT, or three Ctrl-C on the console); 143 SIGTERM, 129 SIGHUP
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

    @Option(help: ArgumentHelp(
        "A virtio-blk disk on a raw image file (repeatable: vda, vdb, ...); ',ro' makes it read-only.",
        valueName: "file[,ro]"))
    var block: [String] = []

    @Option(help: ArgumentHelp(
        "A virtio-net device on host tap NAME (attached, or created if missing); MAC given or generated from NAME.",
        valueName: "name[,mac=xx:xx:xx:xx:xx:xx]"))
    var tunnet: String?

    @Flag(help: "A virtio-rng entropy device fed from the host's getrandom().")
    var rng = false

    @Option(help: ArgumentHelp(
        "Share a host directory with virtio-fs (repeatable); the guest mounts it with 'mount -t virtiofs TAG DIR' "
        + "(tag default fs0, fs1, ...). ',ro' makes it read-only (enforced on the host). Needs virtiofsd, and root.",
        valueName: "dir[,tag=TAG][,ro]"))
    var virtiofs: [String] = []

    @Option(help: ArgumentHelp(
        "The virtiofsd to run for --virtiofs (default: /usr/lib/qemu/virtiofsd, else virtiofsd in PATH).",
        valueName: "path"))
    var virtiofsd: String?

    @Flag(name: .shortAndLong, help: "Describe the machine at start and print counters at the end (stderr).")
    var verbose = false

    @Option(help: ArgumentHelp("Stop the VM and exit 124 after this long: 90s, 5m, 1h, 500ms, or seconds.",
                               valueName: "duration"))
    var timeout: String?

    @Option(help: ArgumentHelp("End the run with exit 0 once console lines have matched these regular "
                               + "expressions, in order (repeatable).", valueName: "regex"))
    var expect: [String] = []

    @Option(name: .customLong("fail-on"), help: ArgumentHelp(
        "End the run with exit 73 as soon as a console line matches (repeatable).", valueName: "regex"))
    var failOn: [String] = []

    @Flag(name: .customLong("no-panic-detection"),
          help: "Do not end the run (exit 72) when the console shows 'Kernel panic - not syncing'.")
    var noPanicDetection = false

    @Option(name: .customLong("console-log"), help: ArgumentHelp("Copy the guest's console to this file.", valueName: "file"))
    var consoleLog: String?

    @Flag(name: .shortAndLong, help: "Keep the guest's console off stdout (see --console-log).")
    var quiet = false

    @Option(help: ArgumentHelp("Write a JSON summary of the run here (docs/ci.md lists its fields).", valueName: "file"))
    var report: String?

    @Option(name: .customLong("debug-exit"), help: ArgumentHelp(
        "QEMU-compatible isa-debug-exit: a guest write of V to PORT (default 0xf4, 4 bytes) exits with (V<<1)|1. "
        + "Give it as --debug-exit or --debug-exit=PORT.", valueName: "port"))
    var debugExit: String?

    @Option(name: .customLong("system-map"), help: ArgumentHelp(
        "Kernel symbols for crash reports when the kernel is not an ELF with a symbol table.", valueName: "file"))
    var systemMap: String?

    @Option(name: .customLong("debug-vmlinux"), help: ArgumentHelp(
        "An ELF with DWARF to resolve oops frames on the console to source lines (default: the kernel, if ELF).",
        valueName: "file"))
    var debugVmlinux: String?
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
    /// When the process started (monotonic ns), filled in by `main` like `passthrough`: the
    /// command's sources then build without main.swift (the fuzz target parses with them).
    var processStart: UInt64 = 0

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
        if let t = timeout, DurationText.parse(t) == nil {
            throw ValidationError("--timeout=\(t) is not a duration of at most a year; use e.g. 90s, 5m, 1h, 500ms")
        }
        if let p = debugExit, Self.parsePort(p) == nil {
            throw ValidationError("--debug-exit=\(p) is not a port number (0-0xfffc)")
        }
        _ = try virtioConfig()
    }

    static func parsePort(_ text: String) -> UInt16? {
        let v = text.lowercased().hasPrefix("0x") ? UInt16(text.dropFirst(2), radix: 16) : UInt16(text)
        guard let v, v <= 0xFFFC else { return nil }
        return v
    }

    /// `--block`, `--tunnet` and `--rng` as the machine's virtio configuration.
    func virtioConfig() throws(ValidationError) -> VirtioConfig {
        var v = VirtioConfig()
        for spec in block {
            var path = Substring(spec)
            var readOnly = false
            if path.hasSuffix(",ro") { path = path.dropLast(3); readOnly = true }
            guard !path.isEmpty else { throw ValidationError("--block needs a file: --block=FILE or --block=FILE,ro") }
            v.blocks.append(.init(path: String(path), readOnly: readOnly))
        }
        if block.count > 26 { throw ValidationError("at most 26 --block disks (vda to vdz)") }
        if let tunnet {
            let parts = tunnet.split(separator: ",", omittingEmptySubsequences: false)
            var mac: [UInt8]? = nil
            for part in parts.dropFirst() {
                guard part.hasPrefix("mac="), let m = VirtioNet.parseMAC(String(part.dropFirst(4))) else {
                    throw ValidationError("--tunnet=\(tunnet): expected NAME or NAME,mac=xx:xx:xx:xx:xx:xx (a unicast MAC)")
                }
                mac = m
            }
            guard let name = parts.first, !name.isEmpty else { throw ValidationError("--tunnet needs a tap name") }
            v.network = .init(tap: String(name), mac: mac)
        }
        v.rng = rng
        for (i, spec) in virtiofs.enumerated() {
            let parts = spec.split(separator: ",", omittingEmptySubsequences: false)
            var share = VirtioConfig.FileSystem(path: String(parts[0]), tag: "fs\(i)", readOnly: false)
            for part in parts.dropFirst() {
                if part == "ro" { share.readOnly = true }
                else if part.hasPrefix("tag=") { share.tag = String(part.dropFirst(4)) }
                else { throw ValidationError("--virtiofs=\(spec): expected DIR[,tag=TAG][,ro]") }
            }
            guard !share.path.isEmpty else { throw ValidationError("--virtiofs needs a directory: --virtiofs=DIR[,tag=TAG][,ro]") }
            guard VirtioFS.validTag(share.tag) else {
                throw ValidationError("--virtiofs=\(spec): the tag must be 1 to \(VirtioFS.maxTagLength) bytes, without ','")
            }
            guard !v.filesystems.contains(where: { $0.tag == share.tag }) else {
                throw ValidationError("--virtiofs: tag '\(share.tag)' is used twice")
            }
            v.filesystems.append(share)
        }
        v.virtiofsdPath = virtiofsd
        return v
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
        config.timeout = timeout.flatMap(DurationText.parse)
        config.expect = expect
        config.failOn = failOn
        config.detectPanic = !noPanicDetection
        config.consoleLogPath = consoleLog
        config.quiet = quiet
        config.debugExitPort = debugExit.flatMap(Self.parsePort)
        config.systemMapPath = systemMap
        config.debugVmlinuxPath = debugVmlinux
        // Read only if the run ends in a crash or an oops: a bad path is said now, not then.
        for (flag, path) in [("--system-map", systemMap), ("--debug-vmlinux", debugVmlinux)] {
            guard let path else { continue }
            switch openInputFile(path) {
            case .success(let file): close(file.fd)
            case .failure(let problem): fail("\(flag)=\(path): \(problem)", code: ExitStatus.unreadableFile)
            }
        }
        config.startTime = processStart

        // The report file is opened now, so an unwritable path fails before the guest runs.
        var reportFD: Int32 = -1
        if let path = report {
            reportFD = openOutputFile(path)
            if reportFD < 0 { fail("--report=\(path): \(String(cString: strerror(errno)))", code: ExitStatus.usage) }
        }
        config.virtio = (try? virtioConfig()) ?? VirtioConfig()
        config.initrdPath = initrd
        config.entry = EntryChoice(rawValue: entry) ?? .auto
        config.addSerialConsole = !noSerialConsole
        config.pvmHost = pvmHost
        // A debugging switch (docs/hypercalls.md): hypercalls through KVM_GET_REGS/SET_REGS.
        config.syncRegisters = getenv("SWIFTVMM_NO_SYNC_REGS") == nil

        let machine = buildMachine(config)
        if verbose {
            Diagnostics.line("swiftvmm: \(size) RAM, \(cpus) vCPU(s), kernel \(kernel) (\(machine.kernel.format), entry \(machine.kernel.entry.name)), command line \"\(machine.kernel.commandLine)\"")
            if let r = machine.kernel.initrd {
                Diagnostics.line("swiftvmm: initrd \(initrd ?? "") at \(Diagnostics.hex(r.lowerBound))-\(Diagnostics.hex(r.upperBound - 1)) (\(r.count) bytes)")
            }
            for e in machine.kernel.e820 { Diagnostics.line("swiftvmm: e820: \(e)") }
        }
        let result = machine.run()
        let outcome = result.outcome
        switch outcome {
        case .guestExit, .debugExit, .shutdown, .reboot, .expectationsMet:
            break
        case .guestFault(_, let report):
            Diagnostics.line(report)
        default:
            Diagnostics.line("swiftvmm: \(outcome.summary)")
        }
        if let crash = result.crash {
            Diagnostics.line("swiftvmm: vCPU state at the end of the run:\n\(crash.text)")
        }
        if let interrupts = result.interrupts {
            Diagnostics.line("swiftvmm: interrupts at the end of the run:\n\(interrupts)")
        }
        if let oops = result.oops {
            Diagnostics.line("swiftvmm: the console showed an oops; its frames resolve to:\n\(oops.text)")
        }
        if verbose { printStatistics(outcome, result.statistics) }
        if reportFD >= 0 {
            let json = RunReport.json(config: config, kernelFormat: machine.kernel.format,
                                      commandLine: machine.kernel.commandLine, result: result,
                                      timeline: machine.timeline)
            var text = json.serialized(indent: 2)
            text += "\n"
            text.withUTF8 { buf in _ = Glibc.write(reportFD, buf.baseAddress!, buf.count) }
            close(reportFD)
        }
        machine.leaveTeardownToHelper()
        Glibc.exit(outcome.exitCode)
    }

    func printStatistics(_ outcome: Outcome, _ stats: GuestMachine.Statistics) {
        Diagnostics.line("swiftvmm: \(outcome.summary); exit code \(outcome.exitCode)")
        let exits = stats.exitsByReason.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        Diagnostics.line("swiftvmm: exits: \(exits.joined(separator: " "))")
        let calls = stats.hypercallsByNumber.sorted { $0.key < $1.key }.map { "#\($0.key)=\($0.value)" }
        Diagnostics.line("swiftvmm: hypercalls: \(calls.isEmpty ? "none" : calls.joined(separator: " "))")
        for (name, c) in stats.deviceAccesses.sorted(by: { $0.key < $1.key }) {
            Diagnostics.line("swiftvmm: \(name): \(c.reads) reads, \(c.writes) writes")
        }
        for line in stats.deviceReports { Diagnostics.line("swiftvmm: \(line)") }
        Diagnostics.line("swiftvmm: unclaimed accesses: \(stats.unclaimedPortAccesses) port, \(stats.unclaimedMMIOAccesses) MMIO")
    }
}

/// The machine `config` describes, or the exit its error maps to. SIGINT/SIGTERM/SIGHUP end
/// its run cleanly (terminal restored, exit code reported): they are blocked everywhere and
/// taken on one thread with sigwait, which asks the machine to stop.
func buildMachine(_ config: MachineConfig) -> GuestMachine {
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
    return machine
}

func fail(_ message: String, code: Int32) -> Never {
    Diagnostics.line("swiftvmm: \(message)")
    Glibc.exit(code)
}
