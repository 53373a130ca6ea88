// swiftvmm exec: run one command in a kernel with this machine's files, and give back its
// output and its status. The pieces: the host's / shared read-only over virtio-fs (with a
// virtiofsd per share), the command's stdio and status on named virtio-console ports, and a
// small initramfs made here in memory with the bundled init (guests/init), what to run, and
// the modules a distribution kernel needs before it can reach any of that. docs/exec.md.

import ArgumentParser
import Devices
import Exec
import Glibc
import HostSupport
import KernelLoading
import Machine
import Memory
import RunControl

struct ExecCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exec",
        abstract: "Run a command in a kernel with this machine's files; exit with the command's status.",
        usage: "swiftvmm exec [options] <kernel> -- <command> [arguments...]",
        discussion: """
        The guest's root is this machine's /, shared read-only (virtio-fs), under a writable \
        tmpfs overlay: the command can write anywhere, and nothing here changes. --rw=DIR shares \
        DIR writable at the same path. The command runs in the current directory, as the \
        invoking user, with this environment's PATH; its stdin, stdout and stderr are \
        swiftvmm's, and swiftvmm exits with its status. The kernel's log goes to --console-log \
        (or to stderr with --verbose).

        Kernel modules (for a distribution kernel whose virtio, virtio-fs, FUSE, overlay and \
        console drivers are modules) come from /lib/modules/VERSION, VERSION read from the \
        kernel image, or from --modules=DIR; the guest's /lib/modules/VERSION is that tree too.

        Needs virtiofsd (Debian: /usr/lib/qemu/virtiofsd from qemu-system-common) and root.

        EXAMPLES:
          swiftvmm exec arch/x86/boot/bzImage -- uname -r
          swiftvmm exec --cpus 2 --mem 1g vmlinux -- ./run-tests.sh; echo $?
          swiftvmm exec --rw=$PWD/out vmlinux -- sh -c 'dmesg > out/dmesg.txt'
          echo hi | swiftvmm exec vmlinux -- cat

        EXIT STATUS: the command's own (128+N if a signal N ended it; 127 not found, 126 not \
        executable), or swiftvmm's as for a run: 64 usage, 65/66 a bad or missing kernel or file, \
        69 no KVM or no virtiofsd, 70 swiftvmm or its init failed (a virtiofsd that died, a kernel \
        lacking what exec needs: the message says what), 72 kernel panic, 124 --timeout, 130 \
        interrupted.
        """)

    @Option(help: "Number of vCPUs.")
    var cpus: Int = 1

    @Option(help: ArgumentHelp("Guest RAM: 512m, 1g, ...", valueName: "size"))
    var mem: String = "1g"

    @Option(help: ArgumentHelp("Share DIR writable at its own path (repeatable).", valueName: "dir"))
    var rw: [String] = []

    @Option(help: ArgumentHelp("The kernel's modules: a folder with modules.dep (default /lib/modules/VERSION).",
                               valueName: "dir"))
    var modules: String?

    @Option(help: ArgumentHelp("The virtiofsd to run (default: /usr/lib/qemu/virtiofsd, else virtiofsd in PATH).",
                               valueName: "path"))
    var virtiofsd: String?

    @Option(help: ArgumentHelp("The bundled init (default: swiftvmm-init beside swiftvmm, or guests/init/build).",
                               valueName: "path"))
    var initBinary: String?

    @Option(help: ArgumentHelp("Stop and exit 124 after this long: 90s, 5m, 1h, or seconds.", valueName: "duration"))
    var timeout: String?

    @Option(help: ArgumentHelp("More words for the kernel's command line (repeatable).", valueName: "words"))
    var append: [String] = []

    @Option(name: .customLong("console-log"), help: ArgumentHelp("Copy the kernel's log (serial console) to this file.", valueName: "file"))
    var consoleLog: String?

    @Option(help: ArgumentHelp("Write a JSON summary of the run here, with the command's status and timings.", valueName: "file"))
    var report: String?

    @Flag(name: .shortAndLong, help: "The kernel's log on stderr, and counters at the end.")
    var verbose = false

    @Argument(help: "The kernel: a bzImage or an ELF vmlinux.")
    var kernel: String

    /// The command: every word after `--` (main.swift splits them off).
    var command: [String] = []
    var processStart: UInt64 = 0


    func validate() throws {
        guard cpus >= 1, cpus <= MachineConfig.maxCPUs else { throw ValidationError("--cpus must be 1...\(MachineConfig.maxCPUs)") }
        if let timeout, DurationText.parse(timeout) == nil {
            throw ValidationError("--timeout=\(timeout): expected a duration such as 90s, 5m, 1h, 500ms or seconds")
        }
        if rw.count > 32 { throw ValidationError("at most 32 --rw directories") }
    }

    func run() throws {
        guard !command.isEmpty else {
            fail("exec needs a command after '--': swiftvmm exec KERNEL -- COMMAND [ARGS...]", code: ExitStatus.usage)
        }
        let size: MemorySize
        do { size = try MemorySize(parsing: mem) } catch { fail("--mem=\(mem): \(error)", code: ExitStatus.usage) }

        // What the kernel is, for its modules.
        let inspection: KernelInspection
        do { inspection = try KernelInspection.inspect(path: kernel) } catch { fail(error.description, code: error.exitCode) }
        let release = inspection.kernelVersion.flatMap { $0.split(separator: " ").first.map(String.init) }

        let modules = resolveModules(release: release)
        var shares = [VirtioConfig.FileSystem(path: "/", tag: ExecSpec.rootTag, readOnly: true)]
        var rwShares: [ExecSpec.Share] = []
        for (i, dir) in rw.enumerated() {
            guard let path = realPath(dir), isDirectory(path) else {
                fail("--rw=\(dir): not a directory", code: ExitStatus.unreadableFile)
            }
            shares.append(.init(path: path, tag: ExecSpec.rwTag(i), readOnly: false))
            rwShares.append(.init(tag: ExecSpec.rwTag(i), path: path))
        }

        var spec = ExecSpec(argv: command, env: Self.environment(), cwd: currentDirectory(),
                            uid: getuid(), gid: getgid(), groups: Self.groups(), rwShares: rwShares,
                            modulesDir: modules.bind, modules: [])
        spec.modules = []
        let initPath = initBinary ?? Self.bundledInit()
        guard let initPath else {
            fail("the bundled init is missing: build it with 'make -C guests/init', or give --init-binary=PATH",
                 code: ExitStatus.unreadableFile)
        }
        let initrd: [UInt8]
        do {
            initrd = try ExecInitramfs.build(initBinary: initPath, spec: spec, modules: modules.load)
        } catch {
            fail(error.description, code: ExitStatus.unreadableFile)
        }

        var words = ["console=ttyS0", "panic=-1", "rdinit=/init"]
        if !verbose { words += ["quiet", "loglevel=3"] }
        var config = MachineConfig(memory: size, kernelPath: kernel, commandLine: (words + append).joined(separator: " "))
        config.cpus = cpus
        config.initrdData = initrd
        config.consoleInput = false
        config.quiet = !verbose
        config.consoleFD = 2
        config.consoleLogPath = consoleLog
        config.timeout = timeout.flatMap(DurationText.parse)
        config.startTime = processStart
        config.virtio.filesystems = shares
        config.virtio.virtiofsdPath = virtiofsd
        config.virtio.rng = true
        // stdin must be an open descriptor for the input port; a closed one reads as empty.
        let input: Int32 = fcntl(0, F_GETFD) >= 0 ? 0 : open("/dev/null", O_RDONLY | O_CLOEXEC)
        config.virtio.consolePorts = [
            .init(name: nil, output: .discard),                       // hvc0: unused by the init
            .init(name: ExecSpec.Port.stdin.rawValue, input: input),
            .init(name: ExecSpec.Port.stdout.rawValue, output: .fd(1)),
            .init(name: ExecSpec.Port.stderr.rawValue, output: .fd(2)),
            .init(name: ExecSpec.Port.status.rawValue, output: .memory),
        ]

        var reportFD: Int32 = -1
        if let path = report {
            reportFD = openOutputFile(path)
            if reportFD < 0 { fail("--report=\(path): \(String(cString: strerror(errno)))", code: ExitStatus.usage) }
        }

        let machine = buildMachine(config)
        let watch = CommandTimes(machine: machine)
        let result = machine.run()
        let times = watch.finish()
        let status = ExecOutcome(statusPort: machine.collectedConsolePort(named: ExecSpec.Port.status.rawValue) ?? [])
        let (code, message) = Self.exitCode(result.outcome, status)
        if let message { Diagnostics.line("swiftvmm: \(message)") }
        if result.outcome.isGuestEnding && status.exitStatus == nil && status.failure == nil && !verbose {
            // The init could not even say why (no console ports): what it printed on the
            // serial console, or the last lines there, are all there is.
            let lines = machine.recentConsoleLines
            let said = lines.filter { $0.contains("swiftvmm-init:") }
            for line in (said.isEmpty ? Array(lines.suffix(6)) : said) { Diagnostics.line("  \(line)") }
        }
        if verbose {
            Diagnostics.line("swiftvmm: \(result.outcome.summary)")
            for line in result.statistics.deviceReports { Diagnostics.line("swiftvmm: \(line)") }
        }
        if reportFD >= 0 {
            var json = RunReport.json(config: config, kernelFormat: machine.kernel.format,
                                      commandLine: machine.kernel.commandLine, result: result, timeline: machine.timeline)
            json = json.adding("exec", .object([
                ("command", .array(command.map { .string($0) })),
                ("status", status.exitStatus.map { JSON.int(Int64($0)) } ?? .null),
                ("init_failure", status.failure.map { .string($0) } ?? .null),
                ("exit_code", .int(Int64(code))),
                // boot -> command start -> command end -> VM gone, in ms since swiftvmm started.
                ("timings_ms", .object([
                    ("first_guest_entry", .optional(machine.timeline.milliseconds(machine.timeline.snapshot.firstGuestEntry))),
                    ("command_start", .optional(machine.timeline.milliseconds(times.start))),
                    ("command_end", .optional(machine.timeline.milliseconds(times.end))),
                    ("end", .optional(machine.timeline.milliseconds(machine.timeline.snapshot.end))),
                ])),
            ]))
            var text = json.serialized(indent: 2) + "\n"
            text.withUTF8 { buf in _ = Glibc.write(reportFD, buf.baseAddress!, buf.count) }
            close(reportFD)
        }
        machine.leaveTeardownToHelper()
        Glibc.exit(code)
    }

    /// The run's exit code: the command's status when the guest powered off after sending
    /// it; otherwise what ended the run, as for any run, and a message when that needs one.
    static func exitCode(_ outcome: Outcome, _ status: ExecOutcome) -> (Int32, String?) {
        switch outcome {
        case .shutdown, .reboot, .guestExit, .debugExit:
            if let s = status.exitStatus { return (s, nil) }
            if let f = status.failure { return (ExitStatus.vmmError, "exec: the guest's init failed: \(f)") }
            return (ExitStatus.vmmError, "exec: the guest ended without the command's status "
                    + "(see the kernel's log: --verbose or --console-log)")
        default:
            return (outcome.exitCode, outcome.summary)
        }
    }

    /// The modules to put in the initramfs, and the tree for the guest's /lib/modules.
    func resolveModules(release: String?) -> (load: [KernelModule], bind: String?) {
        let directory: String
        if let modules {
            guard isDirectory(modules) else { fail("--modules=\(modules): not a directory", code: ExitStatus.unreadableFile) }
            directory = realPath(modules) ?? modules
        } else if let release, isDirectory("/lib/modules/\(release)") {
            directory = "/lib/modules/\(release)"
        } else {
            // A kernel with everything built in needs none (the test kernel); one that
            // lacks something is told so by the init, which names it.
            return ([], nil)
        }
        do {
            let resolution = try KernelModules.resolve(ExecInitramfs.wantedModules, in: directory)
            return (resolution.load, modules == nil ? nil : directory)
        } catch {
            fail("modules in \(directory): \(error)", code: ExitStatus.unreadableFile)
        }
    }

    /// The environment the command gets: the variables that describe the user and terminal,
    /// with this one's PATH.
    static func environment() -> [String] {
        var env: [String] = []
        for name in ["PATH", "HOME", "USER", "LOGNAME", "TERM", "LANG", "LC_ALL", "TZ", "SHELL"] {
            if let v = getenv(name) { env.append("\(name)=\(String(cString: v))") }
        }
        if !env.contains(where: { $0.hasPrefix("PATH=") }) { env.append("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin") }
        return env
    }

    static func groups() -> [UInt32] {
        let n = getgroups(0, nil)
        guard n > 0 else { return [] }
        var list = [gid_t](repeating: 0, count: Int(n))
        let got = getgroups(n, &list)
        return got > 0 ? list.prefix(Int(got)).map { UInt32($0) } : []
    }

    /// swiftvmm-init beside this executable (an install), or in the source tree this build
    /// came from (.build/<config>/swiftvmm → guests/init/build).
    static func bundledInit() -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        let exe = String(cString: buffer)
        let dir = exe.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        for candidate in ["\(dir)/swiftvmm-init", "\(dir)/../../guests/init/build/swiftvmm-init"] {
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    func currentDirectory() -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        return getcwd(&buffer, buffer.count) != nil ? String(cString: buffer) : "/"
    }

    func realPath(_ path: String) -> String? {
        guard let p = realpath(path, nil) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }

    func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }
}

/// When the init said the command started (`start`) and ended (`status N`), as they arrive on
/// the status port: a thread waits on the console's change event during the run.
final class CommandTimes: @unchecked Sendable {
    private let machine: GuestMachine
    private let done = EventFD()
    private var thread: HostThread?
    // Written by the thread, read after it is joined.
    private var start: UInt64?
    private var end: UInt64?

    init(machine: GuestMachine) {
        self.machine = machine
        guard let changed = machine.consoleChanged else { return }
        thread = HostThread.start(name: "exec-status") { [self] in
            var fds = [pollfd(fd: changed.fd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: done.fd, events: Int16(POLLIN), revents: 0)]
            while end == nil {
                if poll(&fds, 2, -1) < 0 && errno != EINTR { return }
                if fds[1].revents != 0 { return }
                changed.drain()
                look()
            }
        }
    }

    private func look() {
        let bytes = machine.collectedConsolePort(named: ExecSpec.Port.status.rawValue) ?? []
        let now = monotonicNanoseconds()
        for line in bytes.split(separator: UInt8(ascii: "\n")) {
            if start == nil && line.elementsEqual("start".utf8) { start = now }
            if end == nil, case .exited = ExecStatus(line: line) { end = now }
        }
    }

    /// Stop watching (the run is over); the times seen.
    func finish() -> (start: UInt64?, end: UInt64?) {
        done.signal()
        _ = thread?.join(until: monotonicNanoseconds() + 1_000_000_000)
        return (start, end)
    }
}

/// What the init sent on the status port: `status N` once the command has ended, or
/// `fail MESSAGE` when it could not run it (guests/init/README.md). The last line counts.
struct ExecOutcome {
    var exitStatus: Int32?
    var failure: String?

    init(statusPort bytes: [UInt8]) {
        for line in bytes.prefix(64 << 10).split(separator: UInt8(ascii: "\n")) {
            switch ExecStatus(line: line) {
            case .exited(let n): exitStatus = n
            case .failed(let m): failure = m
            case nil: break
            }
        }
    }
}
