/// How a run of the guest ended. The first outcome reported wins; everything after it is
/// the VM being taken down.
public enum Outcome: Sendable, Equatable {
    /// The guest called the exit hypercall.
    case guestExit(status: UInt8)
    /// The guest powered itself off.
    case shutdown
    /// The guest asked for a reset; swiftvmm does not restart guests, it ends the run.
    case reboot
    /// The guest reached a state the VMM cannot continue from. `report` is the human-readable
    /// account (exit reason, vCPU, registers, instruction bytes).
    case guestFault(summary: String, report: String)
    /// swiftvmm failed while the guest ran.
    case vmmError(String)
    /// A signal (or the console's triple Ctrl-C) stopped the run.
    case interrupted(signal: Int32)

    public var exitCode: Int32 {
        switch self {
        case .guestExit(let status): return Int32(status)
        case .shutdown, .reboot: return ExitStatus.success
        case .guestFault: return ExitStatus.guestFault
        case .vmmError: return ExitStatus.vmmError
        case .interrupted(let signal): return signal == 2 ? ExitStatus.interrupted : 128 + signal
        }
    }

    /// One line for the end of a run.
    public var summary: String {
        switch self {
        case .guestExit(let status): return "guest exited with status \(status)"
        case .shutdown: return "guest shut down"
        case .reboot: return "guest requested a reboot"
        case .guestFault(let summary, _): return "guest fault: \(summary)"
        case .vmmError(let message): return "VMM error: \(message)"
        case .interrupted(let signal): return "interrupted by signal \(signal)"
        }
    }
}
