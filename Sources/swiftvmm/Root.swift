import ArgumentParser

/// `swiftvmm`: boots a kernel (`run`, the default, so `swiftvmm 64m vmlinux ...` works as
/// lguest's launcher did) or describes one (`inspect`).
struct Root: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swiftvmm",
        abstract: SwiftVMM.configuration.abstract,
        usage: SwiftVMM.configuration.usage,
        discussion: SwiftVMM.configuration.discussion,
        version: SwiftVMM.configuration.version,
        subcommands: [SwiftVMM.self, Inspect.self, ExecCommand.self],
        defaultSubcommand: SwiftVMM.self
    )
}
