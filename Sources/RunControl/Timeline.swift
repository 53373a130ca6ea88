import HostSupport
import Synchronization

/// When things happened during a run, relative to swiftvmm's start, for reports.
/// Each event is recorded once (the first time); recording is cheap and thread-safe.
public final class Timeline: Sendable {
    public struct Events: Sendable {
        public var firstGuestEntry: UInt64?
        public var firstConsoleByte: UInt64?
        public var bootComplete: UInt64?
        public var expectMatches: [(pattern: String, at: UInt64)] = []
        public var end: UInt64?
    }

    /// The process's start, as near as swiftvmm can see it (set first thing in main).
    public let start: UInt64
    private let events = Mutex(Events())
    /// Fast check so the console's per-byte path does not take the lock after the first byte.
    private let sawConsoleByte = Atomic<Bool>(false)

    public init(start: UInt64 = monotonicNanoseconds()) { self.start = start }

    public func markFirstGuestEntry() {
        let now = monotonicNanoseconds()
        events.withLock { if $0.firstGuestEntry == nil { $0.firstGuestEntry = now } }
    }

    @inline(__always)
    public func markConsoleByte() {
        guard !sawConsoleByte.load(ordering: .relaxed) else { return }
        sawConsoleByte.store(true, ordering: .relaxed)
        let now = monotonicNanoseconds()
        events.withLock { if $0.firstConsoleByte == nil { $0.firstConsoleByte = now } }
    }

    public func markBootComplete() {
        let now = monotonicNanoseconds()
        events.withLock { if $0.bootComplete == nil { $0.bootComplete = now } }
    }

    public func markExpectMatch(_ pattern: String) {
        let now = monotonicNanoseconds()
        events.withLock { $0.expectMatches.append((pattern, now)) }
    }

    public func markEnd() {
        let now = monotonicNanoseconds()
        events.withLock { if $0.end == nil { $0.end = now } }
    }

    public var snapshot: Events { events.withLock { $0 } }

    /// Milliseconds from start to `t`.
    public func milliseconds(_ t: UInt64?) -> Double? {
        guard let t else { return nil }
        return Double(t &- start) / 1_000_000
    }
}
