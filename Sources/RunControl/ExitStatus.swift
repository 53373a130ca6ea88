/// swiftvmm's process exit codes: the contract a CI job relies on (README, `--help`).
///
/// A guest's own status (from the exit hypercall) passes through unchanged, so every value
/// 0–255 can come from the guest; QEMU-style debug-exit gives `(value << 1) | 1`. swiftvmm's
/// own codes sit where sysexits(3) and timeout(1) put them; a guest that wants results nobody
/// can mistake for swiftvmm's keeps its statuses below 64.
public enum ExitStatus {
    /// Guest exited with 0, shut down or rebooted cleanly, or every `--expect` pattern matched.
    public static let success: Int32 = 0
    /// Bad option or argument (EX_USAGE).
    public static let usage: Int32 = 64
    /// The kernel (or another input) is malformed: not a kernel, truncated, does not fit (EX_DATAERR).
    public static let malformedImage: Int32 = 65
    /// An input file is missing or unreadable (EX_NOINPUT).
    public static let unreadableFile: Int32 = 66
    /// KVM is unavailable or lacks something swiftvmm needs (EX_UNAVAILABLE).
    public static let kvmUnavailable: Int32 = 69
    /// swiftvmm itself failed: a host resource or an ioctl refused (EX_SOFTWARE).
    public static let vmmError: Int32 = 70
    /// The guest did something the VMM cannot continue from: triple fault, an instruction KVM
    /// cannot emulate, a KVM internal error, a failed VM entry.
    public static let guestFault: Int32 = 71
    /// A kernel panic was seen on the console (`Kernel panic - not syncing`).
    public static let kernelPanic: Int32 = 72
    /// A `--fail-on` pattern matched a console line.
    public static let failOnMatched: Int32 = 73
    /// The guest ended before every `--expect` pattern had matched.
    public static let expectUnmet: Int32 = 74
    /// `--timeout` expired (as timeout(1)).
    public static let timeout: Int32 = 124
    /// swiftvmm was interrupted (SIGINT, or three Ctrl-C within a second on the console): 128+2.
    public static let interrupted: Int32 = 130
    /// swiftvmm was terminated (SIGTERM): 128+15. SIGHUP gives 129.
    public static let terminated: Int32 = 143
}
