import Glibc
import HostSupport
import Synchronization

// The host side of virtio-console's ports: how an owner describes them, what they count, and
// where the guest's bytes go (`ConsoleSink`).

extension VirtioConsole {
    /// One port as its owner describes it.
    public struct Port: Sendable, Equatable {
        /// What the guest reads in /sys/class/virtio-ports/vportNpM/name (nil: nothing). Port 0
        /// is the console (hvc0) whether it has a name or not.
        public var name: String?
        /// A host fd whose bytes go to the guest (a command's stdin). At its end the guest's
        /// reads return 0 (EOF). The device reads it but never closes it.
        public var input: Int32?
        /// Where the guest's bytes go.
        public var output: Output

        public init(name: String?, input: Int32? = nil, output: Output = .discard) {
            self.name = name
            self.input = input
            self.output = output
        }
    }

    public enum Output: Sendable, Equatable {
        /// Written to this fd (never closed by the device) by a writer thread of the port's
        /// own, through a backlog of `backlogCapacity` bytes.
        case fd(Int32)
        /// Kept for `collected(port:)`, up to `memoryLimit` bytes; more is dropped and counted.
        case memory
        /// Counted and dropped.
        case discard
    }

    /// A port list the device cannot offer.
    public enum ConfigurationError: Error, Equatable, Sendable, CustomStringConvertible {
        case portCount(Int)
        case badName(port: Int, String)
        case duplicateName(String)
        case moreThanOneInput(ports: [Int])
        case badFD(port: Int, Int32)

        public var description: String {
            switch self {
            case .portCount(let n):
                return "virtio-console: \(n) ports; between 1 and \(VirtioConsole.maxPorts) are possible"
            case .badName(let p, let name):
                return "virtio-console: port \(p)'s name \"\(name)\" is not 1 to \(VirtioConsole.maxNameLength) bytes without NUL or '/'"
            case .duplicateName(let name):
                return "virtio-console: two ports are named \"\(name)\""
            case .moreThanOneInput(let ports):
                return "virtio-console: ports \(ports.map(String.init).joined(separator: ", ")) all have a host input; one at most is possible"
            case .badFD(let p, let fd):
                return "virtio-console: port \(p): \(fd) is not a file descriptor"
            }
        }
    }

    /// What crossed one port.
    public final class PortCounters: Sendable {
        /// Host → guest: bytes put in the guest's receive buffers.
        public let bytesIn = Atomic<UInt64>(0)
        /// Guest → host: bytes taken from the guest's transmit buffers (and emerg_wr).
        public let bytesOut = Atomic<UInt64>(0)
        /// Of those, bytes that went nowhere: a memory port past its limit, a discard port, an
        /// fd that failed (a reader that went away) or was closed at the end of the run.
        public let bytesDropped = Atomic<UInt64>(0)
    }
}

/// Where one port's guest output goes.
///
/// For an fd, a backlog in memory written out by a thread of the port's own: the device
/// thread only copies into it, so a reader that does not keep up (a terminal paused with
/// Ctrl-S, a pipe nobody reads) never holds it. When the backlog is full the device leaves
/// the chain in the ring, and the writer kicks the queue once it has made room: the guest's
/// writes wait, as they would on a slow serial line. Bytes reach the fd in the order the
/// guest wrote them.
final class ConsoleSink: Sendable {
    enum Kind: Equatable { case fd(Int32), memory, discard }

    /// The backlog's bytes besides the usual `backlogCapacity`, for what the guest left in
    /// its ring when it resets the device (see `take(dropExcess:)`): a full ring of the
    /// largest writes Linux makes (32 KiB each).
    static let resetAllowance = Int(VirtioConsole.queueSize) * (32 << 10)
    static let chunkSize = 64 << 10

    struct State {
        /// fd only. Storage is allocated once, untouched until used.
        var backlog: ByteFIFO?
        var memory: [UInt8] = []
        /// The device left a chain in its ring for want of room: kick `kick` when there is some.
        var waiting = false
        var kick: EventFD?
        /// Bytes the writer has taken out and is writing now.
        var writing = 0
        /// The fd failed (EPIPE, EBADF …): from then on bytes are dropped, and counted.
        var failed = false
        /// `close` was called: the writer writes what it holds and stops; later bytes are dropped.
        var closing = false
        var writerDone = false
        var writer: HostThread?
    }

    let kind: Kind
    let label: String
    let counters: VirtioConsole.PortCounters
    private let state: Mutex<State>
    /// Bytes are waiting (device thread to writer).
    private let dataReady = EventFD()
    /// A memory port collected bytes (the console's, shared by its ports).
    private let changed: EventFD

    init(kind: Kind, label: String, counters: VirtioConsole.PortCounters, changed: EventFD) {
        self.kind = kind
        self.label = label
        self.counters = counters
        self.changed = changed
        var s = State()
        if case .fd = kind { s.backlog = ByteFIFO(capacity: VirtioConsole.backlogCapacity + Self.resetAllowance) }
        state = Mutex(s)
    }

    /// Start the writer thread (fd ports only).
    func start(name: String) {
        guard case .fd(let fd) = kind else { return }
        let writer = HostThread.start(name: name) { [self] in writeOut(fd) }
        state.withLock { $0.writer = writer }
    }

    func attach(kick: EventFD) { state.withLock { $0.kick = kick } }

    var isWaiting: Bool { state.withLock { $0.waiting } }

    var collected: [UInt8] { state.withLock { $0.memory } }

    /// Take bytes [from, from + count) of the chain's readable stream; returns how many were
    /// taken. For an fd, what does not fit in the backlog is left in the chain (and the queue
    /// kicked once there is room), or, with `dropExcess`, dropped and counted: that is for the
    /// chains a resetting driver leaves behind, which may use the backlog's reset allowance.
    func take(_ chain: DescriptorChain, from: UInt64, count: UInt64, dropExcess: Bool) -> UInt64 {
        guard count > 0 else { return 0 }
        let (taken, dropped, wake) = state.withLock { s -> (UInt64, UInt64, Bool) in
            switch kind {
            case .discard:
                return (count, count, false)
            case .memory:
                let n = min(count, UInt64(VirtioConsole.memoryLimit - s.memory.count))
                _ = chain.forEachPiece(writable: false, from: from, count: n) { p, k in
                    s.memory.append(contentsOf: UnsafeRawBufferPointer(start: p, count: k))
                    return true
                }
                return (count, count - n, n > 0)
            case .fd:
                if s.failed || s.closing { return (count, count, false) }
                let limit = VirtioConsole.backlogCapacity + (dropExcess ? Self.resetAllowance : 0)
                let wasEmpty = s.backlog!.isEmpty
                let n = min(count, UInt64(max(0, limit - s.backlog!.count)))
                _ = chain.forEachPiece(writable: false, from: from, count: n) { p, k in
                    _ = s.backlog!.append(p, k)
                    return true
                }
                if dropExcess { return (count, count - n, wasEmpty && n > 0) }
                if n < count { s.waiting = true }
                return (n, 0, wasEmpty && n > 0)
            }
        }
        counters.bytesOut.wrappingAdd(taken, ordering: .relaxed)
        if dropped > 0 { counters.bytesDropped.wrappingAdd(dropped, ordering: .relaxed) }
        if wake {
            if case .memory = kind { changed.signal() } else { dataReady.signal() }
        }
        return taken
    }

    /// One byte from emerg_wr (a vCPU, which must not wait: dropped if the backlog is full).
    func put(_ byte: UInt8) {
        let (stored, wake) = state.withLock { s -> (Bool, Bool) in
            switch kind {
            case .discard:
                return (false, false)
            case .memory:
                guard s.memory.count < VirtioConsole.memoryLimit else { return (false, false) }
                s.memory.append(byte)
                return (true, true)
            case .fd:
                guard !s.failed, !s.closing, s.backlog!.count < VirtioConsole.backlogCapacity else { return (false, false) }
                let wasEmpty = s.backlog!.isEmpty
                _ = s.backlog!.push(byte)
                return (true, wasEmpty)
            }
        }
        counters.bytesOut.wrappingAdd(1, ordering: .relaxed)
        if !stored { counters.bytesDropped.wrappingAdd(1, ordering: .relaxed) }
        if wake {
            if case .memory = kind { changed.signal() } else { dataReady.signal() }
        }
    }

    /// Everything taken so far has been written out (or can never be: the fd failed).
    var isFlushed: Bool { state.withLock { s in s.failed || ((s.backlog?.isEmpty ?? true) && s.writing == 0) } }

    /// Stop taking bytes; the writer writes what it holds and exits. Returns true once it has.
    func close() -> Bool {
        let done = state.withLock { s -> Bool in
            s.closing = true
            return s.writer == nil || s.writerDone
        }
        if !done { dataReady.signal() }
        return done
    }

    /// After `close`: join the writer if it has exited (true), else leave it (false: it is
    /// stuck in a write to a reader that never reads, and goes with the process).
    func joinWriter() -> Bool {
        let (writer, done) = state.withLock { s -> (HostThread?, Bool) in
            guard s.writerDone, let w = s.writer else { return (nil, s.writer == nil) }
            s.writer = nil
            return (w, true)
        }
        writer?.join()
        return done
    }

    /// The writer thread: wait for bytes, write them out a chunk at a time, kick the device's
    /// queue when room was made for a chain it left.
    private func writeOut(_ fd: Int32) {
        // A reader that went away must be EPIPE here, not SIGPIPE ending swiftvmm. The signal
        // a write raises goes to the writing thread, so blocking it on this one is enough.
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        let chunk = UnsafeMutableRawPointer.allocate(byteCount: Self.chunkSize, alignment: 16)
        defer { chunk.deallocate() }
        while true {
            var pfd = pollfd(fd: dataReady.fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&pfd, 1, -1)
            dataReady.drain()
            while true {
                let (n, closing, kick) = state.withLock { s -> (Int, Bool, EventFD?) in
                    s.writing = s.backlog!.take(into: chunk, max: Self.chunkSize)
                    var kick: EventFD?
                    if s.writing > 0 && s.waiting {
                        s.waiting = false
                        kick = s.kick
                    }
                    if s.writing == 0 && s.closing { s.writerDone = true }
                    return (s.writing, s.closing, kick)
                }
                kick?.signal()
                if n == 0 {
                    if closing { return }
                    break
                }
                let error = writeFully(fd, chunk, n)
                guard error != 0 else { continue }
                // Output gone: drop what is held and whatever comes, so the guest's writes do
                // not wait for ever; said once.
                let kickNow = state.withLock { s -> EventFD? in
                    s.failed = true
                    let lost = UInt64(s.writing + s.backlog!.count)
                    counters.bytesDropped.wrappingAdd(lost, ordering: .relaxed)
                    s.backlog!.removeAll()
                    s.writing = 0
                    defer { s.waiting = false }
                    return s.waiting ? s.kick : nil
                }
                kickNow?.signal()
                Diagnostics.line("swiftvmm: virtio-console \(label): writing to fd \(fd): \(String(cString: strerror(error))); its output is dropped from now on")
            }
        }
    }
}
