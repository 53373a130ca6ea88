// RunControl: how a run is steered and how it ends. Whatever ends it (a vCPU's fatal exit,
// a device such as debug-exit or the console's panic watch, a signal, the timeout) reports an
// `Outcome` to the `StopController`; the first report wins, and its `exitCode` is the
// documented exit status (`ExitStatus`). `Timeline` records when things happened, for the
// report; `TraceOptions` are the `--trace` switches the hot paths test.

internal import CHost
import Glibc
import HostSupport
import Synchronization

/// Where anything that ends the run (a vCPU, a device, a signal, the console) reports it,
/// and what the main thread waits on. The first report wins; later ones are ignored, so a
/// guest that exits while another vCPU faults has one clear outcome.
public final class StopController: Sendable {
    private let outcomeBox = Mutex<Outcome?>(nil)
    /// Set once an outcome is reported. Public so a vCPU loop in another module can read it
    /// inline after a device access (a device may have just decided the run).
    public let stopping = Atomic<Bool>(false)
    /// The main thread sleeps on this eventfd; `stop` makes it readable.
    private let eventFD: Int32
    /// An outcome already decided whose stop is still to come, and when it comes at the latest.
    private let decided = Mutex<(outcome: Outcome, deadline: UInt64)?>(nil)
    /// Wakes `wait` to look at a new decision's deadline (drained there; `eventFD` never is).
    private let decisionFD: Int32

    public init() {
        eventFD = sys_eventfd(0, SYS_EFD_CLOEXEC)
        decisionFD = sys_eventfd(0, SYS_EFD_CLOEXEC)
        precondition(eventFD >= 0 && decisionFD >= 0, "eventfd: \(String(cString: strerror(errno)))")
    }

    deinit {
        close(eventFD)
        close(decisionFD)
    }

    /// Fix the outcome now but stop a little later: a kernel panic is decided by its first
    /// line, and the stack trace Linux prints after it is what makes it worth reading. The run
    /// stops at the next `stop` (from whoever: the console at the panic's last line, a reset,
    /// the timeout) or after `grace` seconds, and ends with this outcome whatever that `stop`
    /// reports. The first decision or stop wins, as with `stop`.
    public func decide(_ outcome: Outcome, stoppingWithin grace: Double) {
        let deadline = monotonicNanoseconds() + UInt64(max(0, grace) * 1e9)
        let first = outcomeBox.withLock { current -> Bool in
            guard current == nil else { return false }
            return decided.withLock { d in
                guard d == nil else { return false }
                d = (outcome, deadline)
                return true
            }
        }
        if first {
            var one: UInt64 = 1
            _ = write(decisionFD, &one, 8)
        }
    }

    /// Report an outcome. Returns true if it was the first (and so is the one that counts);
    /// after a `decide`, the decided outcome is the one that counts.
    @discardableResult
    public func stop(_ outcome: Outcome) -> Bool {
        let first = outcomeBox.withLock { current -> Bool in
            guard current == nil else { return false }
            current = decided.withLock { $0?.outcome } ?? outcome
            return true
        }
        if first {
            stopping.store(true, ordering: .releasing)
            var one: UInt64 = 1
            _ = write(eventFD, &one, 8)
        }
        return first
    }

    /// Cheap check for loops that should end once the run is over.
    @inline(__always)
    public var isStopping: Bool { stopping.load(ordering: .acquiring) }

    public var outcome: Outcome? { outcomeBox.withLock { $0 } }

    /// A file descriptor that becomes readable once the run is stopping (for poll loops).
    public var pollFD: Int32 { eventFD }

    /// Block until some outcome is reported and return it. With a timeout, report
    /// `.timeout` when it expires first (whatever the vCPUs are doing).
    public func wait(timeout: Double? = nil) -> Outcome {
        // Clamped: a caller's absurd timeout must not trap converting to nanoseconds.
        let deadline = timeout.map { monotonicNanoseconds() + UInt64(min(max($0, 0), DurationText.maxSeconds) * 1e9) }
        while true {
            if let o = outcome { return o }
            let now = monotonicNanoseconds()
            if let deadline, now >= deadline {
                stop(.timeout(seconds: timeout!))
                continue
            }
            let decision = decided.withLock { $0 }
            if let decision, now >= decision.deadline {
                stop(decision.outcome)
                continue
            }
            let next = [deadline, decision?.deadline].compactMap { $0 }.min()
            let ms = next.map { Int32(min(($0 - now + 999_999) / 1_000_000, UInt64(Int32.max))) } ?? -1
            var pfds = [pollfd(fd: eventFD, events: Int16(POLLIN), revents: 0),
                        pollfd(fd: decisionFD, events: Int16(POLLIN), revents: 0)]
            _ = poll(&pfds, 2, ms)
            if pfds[1].revents != 0 {
                var value: UInt64 = 0
                _ = read(decisionFD, &value, 8)
            }
        }
    }
}
