/// How a run of the guest ended. The first outcome reported wins; everything after it is
/// the VM being taken down.
public enum Outcome: Sendable, Equatable {
    /// The guest called the exit hypercall.
    case guestExit(status: UInt8)
    /// The guest wrote `value` to the QEMU-compatible debug-exit port.
    case debugExit(value: UInt32)
    /// The guest powered itself off.
    case shutdown
    /// The guest asked for a reset; swiftvmm does not restart guests, it ends the run.
    case reboot
    /// Every `--expect` pattern matched, in order.
    case expectationsMet(lastPattern: String, line: String)
    /// The guest ended (`after`) before `pattern`, the next `--expect`, had matched.
    case expectationUnmet(pattern: String, after: String)
    /// A `--fail-on` pattern matched a console line.
    case failOn(pattern: String, line: String)
    /// The console showed a kernel panic.
    case kernelPanic(line: String)
    /// `--timeout` expired.
    case timeout(seconds: Double)
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
        case .debugExit(let value): return Int32(truncatingIfNeeded: (value << 1) | 1) & 0xFF
        case .shutdown, .reboot, .expectationsMet: return ExitStatus.success
        case .expectationUnmet: return ExitStatus.expectUnmet
        case .failOn: return ExitStatus.failOnMatched
        case .kernelPanic: return ExitStatus.kernelPanic
        case .timeout: return ExitStatus.timeout
        case .guestFault: return ExitStatus.guestFault
        case .vmmError: return ExitStatus.vmmError
        case .interrupted(let signal): return 128 + signal
        }
    }

    /// A short stable name, for reports and scripts.
    public var name: String {
        switch self {
        case .guestExit: return "guest-exit"
        case .debugExit: return "debug-exit"
        case .shutdown: return "shutdown"
        case .reboot: return "reboot"
        case .expectationsMet: return "expect-matched"
        case .expectationUnmet: return "expect-unmet"
        case .failOn: return "fail-on"
        case .kernelPanic: return "kernel-panic"
        case .timeout: return "timeout"
        case .guestFault: return "guest-fault"
        case .vmmError: return "vmm-error"
        case .interrupted: return "interrupted"
        }
    }

    /// One line for the end of a run.
    public var summary: String {
        switch self {
        case .guestExit(let status): return "guest exited with status \(status)"
        case .debugExit(let value): return "guest wrote \(value) to the debug-exit port (exit code \(exitCode))"
        case .shutdown: return "guest shut down"
        case .reboot: return "guest requested a reboot"
        case .expectationsMet(let pattern, _): return "every --expect pattern matched (last: /\(pattern)/)"
        case .expectationUnmet(let pattern, let after): return "\(after) before --expect /\(pattern)/ matched"
        case .failOn(let pattern, let line): return "--fail-on /\(pattern)/ matched: \(line)"
        case .kernelPanic(let line): return "kernel panic: \(line)"
        case .timeout(let seconds): return "timed out after \(DurationText.format(seconds))"
        case .guestFault(let summary, _): return "guest fault: \(summary)"
        case .vmmError(let message): return "VMM error: \(message)"
        case .interrupted(let signal): return "interrupted by signal \(signal)"
        }
    }

    /// Whether this is the guest ending on its own (as opposed to a decision or a failure).
    public var isGuestEnding: Bool {
        switch self {
        case .guestExit, .debugExit, .shutdown, .reboot: return true
        default: return false
        }
    }
}

/// Durations as users write them for `--timeout`: `90s`, `5m`, `1h`, `500ms`, `1.5m`, or a
/// bare number of seconds.
public enum DurationText {
    /// The longest duration accepted: a year. Longer is a typo, and would not fit the clock's
    /// nanoseconds anyway.
    public static let maxSeconds: Double = 366 * 86400

    /// Seconds, or nil unless `text` is a positive duration of at most `maxSeconds`.
    public static func parse(_ text: String) -> Double? {
        let s = text.lowercased()
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        var number = Substring(s)
        var scale = 1.0
        for (suffix, factor) in units where s.hasSuffix(suffix) {
            number = s.dropLast(suffix.count)
            scale = factor
            break
        }
        guard !number.isEmpty, number.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
              let value = Double(number), value > 0, value.isFinite, value * scale <= maxSeconds else { return nil }
        return value * scale
    }

    public static func format(_ seconds: Double) -> String {
        if seconds >= 60, seconds.truncatingRemainder(dividingBy: 60) == 0 { return "\(Int(seconds / 60))m" }
        if seconds == seconds.rounded() { return "\(Int(seconds))s" }
        return "\(seconds)s"
    }
}
