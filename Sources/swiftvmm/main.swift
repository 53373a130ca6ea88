import ArgumentParser
import HostSupport

/// When swiftvmm started, for reported timings: taken before anything else runs.
let processStart = monotonicNanoseconds()

// Split at the first "--": what follows belongs to the guest, verbatim, and is never
// parsed as swiftvmm options.
var arguments = Array(CommandLine.arguments.dropFirst())
var passthrough: [String] = []
if let i = arguments.firstIndex(of: "--") {
    passthrough = Array(arguments[(i + 1)...])
    arguments = Array(arguments[..<i])
}
// `--debug-exit` takes an optional value, which swift-argument-parser options cannot:
// the bare flag means the default port.
arguments = arguments.map { $0 == "--debug-exit" ? "--debug-exit=0xf4" : $0 }
// `swiftvmm --help` is the help of what users run: the default command with all its options,
// generated from their declarations, plus a pointer to the other subcommand.
if arguments.first != "inspect", arguments.first != "exec", arguments.contains(where: { $0 == "--help" || $0 == "-h" }) {
    print(SwiftVMM.helpMessage())
    print("""

        OTHER COMMANDS:
          swiftvmm exec [options] <kernel> -- <command> [args...]
                                               run a command in the kernel with this machine's
                                               files; exits with its status (see 'swiftvmm exec --help',
                                               docs/exec.md)
          swiftvmm inspect <kernel> [--json]   what swiftvmm's loaders see in a kernel image, without
                                               booting it (see 'swiftvmm inspect --help')
        """)
    Root.exit()
}
do {
    // A run, by far the common case, is parsed as `SwiftVMM` directly: going through `Root`
    // and its default subcommand builds every option's definition twice (~1 ms of a 10 ms
    // cold start). Anything else, and any error (so its message names the full command),
    // goes through `Root`.
    let direct = ["inspect", "run", "help", "exec"].contains(arguments.first ?? "") || arguments.contains("--version")
        ? nil : try? SwiftVMM.parseAsRoot(arguments)
    var command = try direct ?? Root.parseAsRoot(arguments)
    if var vmm = command as? SwiftVMM {
        vmm.passthrough = passthrough
        vmm.processStart = processStart
        command = vmm
    } else if var exec = command as? ExecCommand {
        exec.command = passthrough
        exec.processStart = processStart
        command = exec
    }
    try command.run()
} catch {
    Root.exit(withError: error)
}
