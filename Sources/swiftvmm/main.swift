import ArgumentParser

// Split at the first "--": what follows belongs to the guest, verbatim, and is never
// parsed as swiftvmm options.
var arguments = Array(CommandLine.arguments.dropFirst())
var passthrough: [String] = []
if let i = arguments.firstIndex(of: "--") {
    passthrough = Array(arguments[(i + 1)...])
    arguments = Array(arguments[..<i])
}
do {
    var command = try Root.parseAsRoot(arguments)
    if var vmm = command as? SwiftVMM {
        vmm.passthrough = passthrough
        command = vmm
    }
    try command.run()
} catch {
    Root.exit(withError: error)
}
