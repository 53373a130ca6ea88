/// The hypercalls swiftvmm provides: the registry.
///
/// To add one (see docs/hypercalls.md for the whole walk-through):
///   1. give it a number and a name here, and its argument count in `argumentCount`;
///   2. write its handler in HypercallHandler.swift and add its case to `dispatch`;
///   3. bind its stub symbol in the guest's linker script (`hypercall_page + nr * 32`).
public enum Hypercall: UInt32, CaseIterable, Sendable {
    /// `noop() -> 0`: the cheapest round trip, for measuring the cost of a hypercall.
    case noop = 0
    /// `console_write(buf, len) -> len`: write guest bytes to the console.
    case consoleWrite = 1
    /// `exit(status)`: end the VM; swiftvmm exits with `status & 0xFF`. Does not return.
    case exit = 2
    /// `time_ns() -> ns`: the host's monotonic clock in nanoseconds.
    case timeNs = 3
    /// `random(buf, len) -> len`: fill a guest buffer from the host's getrandom(2).
    case random = 4
    /// `version(buf, len) -> abi`: the ABI version; writes "swiftvmm X.Y.Z" into buf if given.
    case version = 5
    /// `checksum(buf, len) -> fnv1a32`: the FNV-1a hash of a guest buffer. The worked example
    /// of adding a hypercall in docs/hypercalls.md.
    case checksum = 6

    public var name: String {
        switch self {
        case .noop: return "noop"
        case .consoleWrite: return "console_write"
        case .exit: return "exit"
        case .timeNs: return "time_ns"
        case .random: return "random"
        case .version: return "version"
        case .checksum: return "checksum"
        }
    }

    /// How many of the argument registers (rdi, rsi, rdx, rcx, r8) the call reads; for traces.
    public var argumentCount: Int {
        switch self {
        case .noop, .timeNs: return 0
        case .exit: return 1
        case .consoleWrite, .random, .version, .checksum: return 2
        }
    }
}

/// Error results, returned in RAX as negative Linux errno values.
public enum HypercallError {
    /// A buffer is not entirely inside guest RAM (or a written buffer is read-only).
    public static let fault: Int64 = -14        // EFAULT
    /// An argument is out of range (e.g. a length over `maxBufferLength`).
    public static let invalid: Int64 = -22      // EINVAL
    /// No hypercall has this number.
    public static let noSuchCall: Int64 = -38   // ENOSYS
}
