import ArgumentParser

/// `swiftvmm`: boots a kernel (`run`, the default, so `swiftvmm 64m vmlinux ...` works as
/// lguest's launcher did) or describes one (`inspect`).
struct Root: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swiftvmm",
        abstract: SwiftVMM.configuration.abstract,
        usage: SwiftVMM.configuration.usage,
        discussion: SwiftVMM.configuration.discussion + """


        OPTIONS (of the default command, 'run'; details in 'swiftvmm run --help'):
          --cpus N                  vCPUs (at most what this host's KVM allows)
          --initrd FILE             initial RAM disk
          --entry MODE              auto, pvh, linux64, or linux32
          --no-serial-console       do not add console=ttyS0 to a Linux command line
          --pvm-host                hide CX16 and KVM's vmcall-based PV features (PVM hosts)
          --trace WHAT              exits, io, hypercalls, guest-errors, all
          -v, --verbose             the machine at start, counters at the end
        """,
        version: SwiftVMM.configuration.version,
        subcommands: [SwiftVMM.self, Inspect.self],
        defaultSubcommand: SwiftVMM.self
    )
}
