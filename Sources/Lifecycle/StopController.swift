internal import CSystem
import Glibc
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

    public init() {
        eventFD = sys_eventfd(0, SYS_EFD_CLOEXEC)
        precondition(eventFD >= 0, "eventfd: \(String(cString: strerror(errno)))")
    }

    deinit { close(eventFD) }

    /// Report an outcome. Returns true if it was the first (and so is the one that counts).
    @discardableResult
    public func stop(_ outcome: Outcome) -> Bool {
        let first = outcomeBox.withLock { current -> Bool in
            guard current == nil else { return false }
            current = outcome
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
        let deadline = timeout.map { monotonicNanoseconds() + UInt64($0 * 1e9) }
        while true {
            if let o = outcome { return o }
            var ms: Int32 = -1
            if let deadline {
                let now = monotonicNanoseconds()
                if now >= deadline {
                    stop(.timeout(seconds: timeout!))
                    continue
                }
                ms = Int32(min((deadline - now + 999_999) / 1_000_000, UInt64(Int32.max)))
            }
            var pfd = pollfd(fd: eventFD, events: Int16(POLLIN), revents: 0)
            _ = poll(&pfd, 1, ms)
        }
    }
}
