import Glibc
import HostSupport
import RunControl
import Synchronization

/// The guest's console as the host sees it: bytes from the serial port and the console
/// hypercall go to standard output (unless `quiet`), to the `--console-log` file if any, and
/// through the monitor that watches for panics and `--expect`/`--fail-on` patterns.
///
/// Once `start` has run, the writing happens on an output thread: a vCPU only appends to an
/// in-memory backlog, so a terminal paused with Ctrl-S or a pipe nobody reads does not stop
/// the guest (up to `backlogCapacity` bytes; beyond that the vCPU waits for room, as a guest
/// would wait for a UART that cannot send). The monitor still sees every byte at once, in
/// order, on the writer's side of the lock. `finish` drains the backlog at the end of a run.
/// Without `start` (unit tests), writes go straight to the fds.
public final class Console: Sendable {
    public static let backlogCapacity = 1 << 20
    /// How long the output thread lets bytes gather after a wake-up before writing them out.
    static let gatherMicroseconds: UInt32 = 1000

    private let fd: Int32
    private let quiet: Bool
    private let logFD: Int32?
    private let monitor: ConsoleMonitor?
    private let timeline: Timeline?

    /// The backlog and what the output thread must know about the run.
    struct Backlog {
        var ring = ByteFIFO(capacity: Console.backlogCapacity)
        /// The output thread is running (else writes go straight out).
        var threaded = false
        /// The run is ending: drain and stop.
        var closing = false
        var writer: HostThread?
    }
    private let backlog = Mutex(Backlog())
    /// Bytes are waiting (vCPUs to the output thread) / room was made (the other way).
    private let dataReady = EventFD()
    private let roomReady = EventFD()
    private let writerDone = Atomic<Bool>(false)
    /// The run is ending: a writer waiting for backlog room drops the rest instead.
    private let abandoned = Atomic<Bool>(false)

    public init(fd: Int32 = 1, quiet: Bool = false, logFD: Int32? = nil, monitor: ConsoleMonitor? = nil,
                timeline: Timeline? = nil) {
        self.fd = fd
        self.quiet = quiet
        self.logFD = logFD
        self.monitor = monitor
        self.timeline = timeline
    }

    /// Start the output thread. Call before any vCPU runs.
    public func start() {
        let writer = HostThread.start(name: "console-out") { [self] in self.drainLoop() }
        backlog.withLock { b in
            b.threaded = true
            b.writer = writer
        }
    }

    /// The run is ending: from now on a write that finds the backlog full drops what does not
    /// fit rather than wait (a vCPU waiting there holds the UART's lock).
    public func abandonWaits() { abandoned.store(true, ordering: .releasing) }

    /// Write out everything still in the backlog and stop the output thread, waiting at most
    /// `seconds` (an output nobody reads must not keep swiftvmm from exiting).
    public func finish(waitingUpTo seconds: Double = 2) {
        let writer: HostThread? = backlog.withLock { b in
            b.closing = true
            defer { b.writer = nil }
            return b.writer
        }
        guard let writer else { return }
        dataReady.signal()
        let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
        while !writerDone.load(ordering: .acquiring) && monotonicNanoseconds() < deadline { usleep(50) }
        if writerDone.load(ordering: .acquiring) { writer.join() }
    }

    @inline(__always)
    public func put(_ byte: UInt8) {
        var b = byte
        withUnsafeBytes(of: &b) { write($0) }
    }

    public func write(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        timeline?.markConsoleByte()
        var offset = 0
        var first = true
        while offset < bytes.count {
            let (taken, threaded, wake) = backlog.withLock { b -> (Int, Bool, Bool) in
                if first, let monitor { monitor.feed(bytes) }
                guard b.threaded else {
                    if !quiet { writeFully(fd, base, bytes.count) }
                    if let logFD { writeFully(logFD, base, bytes.count) }
                    return (bytes.count, false, false)
                }
                // The output thread drains everything it finds, so it needs waking only when
                // the backlog goes from empty to not: one syscall per burst, not per byte.
                let wasEmpty = b.ring.isEmpty
                return (b.ring.append(base + offset, bytes.count - offset), true, wasEmpty)
            }
            first = false
            offset += taken
            guard threaded else { return }
            if wake { dataReady.signal() }
            if offset < bytes.count {
                // At the end of a run nobody may wait on an output nobody reads.
                if abandoned.load(ordering: .acquiring) { return }
                // The backlog is full: wait for the output thread to make room.
                var pfd = pollfd(fd: roomReady.fd, events: Int16(POLLIN), revents: 0)
                _ = poll(&pfd, 1, 100)
                roomReady.drain()
            }
        }
    }

    private func drainLoop() {
        defer { writerDone.store(true, ordering: .releasing) }
        let chunkSize = 64 << 10
        let chunk = UnsafeMutableRawPointer.allocate(byteCount: chunkSize, alignment: 16)
        defer { chunk.deallocate() }
        while true {
            var pfd = pollfd(fd: dataReady.fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&pfd, 1, -1)
            dataReady.drain()
            // A guest printing byte by byte through the UART would otherwise wake us for
            // nearly every byte (the backlog empties as fast as we write it). Letting bytes
            // gather for a moment turns that into one write per burst, well below what a
            // person at a terminal can notice. Not when the run is ending: `finish` waits.
            if !backlog.withLock({ $0.closing }) { usleep(Self.gatherMicroseconds) }
            while true {
                let (n, closing) = backlog.withLock { b in (b.ring.take(into: chunk, max: chunkSize), b.closing) }
                if n == 0 {
                    if closing { return }
                    break
                }
                roomReady.signal()
                // A reader gone (a closed pipe) drops the output; the guest goes on.
                if !quiet { writeFully(fd, chunk, n) }
                if let logFD { writeFully(logFD, chunk, n) }
            }
        }
    }
}

/// Feeds standard input to the serial port, from its own thread.
///
/// When stdin is a terminal it is put in raw mode (keys go to the guest as typed, Ctrl-C
/// included) and restored on every way out. As in lguest, three Ctrl-C within one second end
/// the VM: the way out of a guest that ignores its console.
public final class ConsoleInput: Sendable {
    private let serial: Serial16550
    private let stop: StopController
    private let fd: Int32
    nonisolated(unsafe) private static var savedTermios: termios? = nil
    nonisolated(unsafe) private static var savedFD: Int32 = 0

    public init(serial: Serial16550, stop: StopController, fd: Int32 = 0) {
        self.serial = serial
        self.stop = stop
        self.fd = fd
    }

    /// Put the terminal in raw mode if stdin is one. Output processing stays on, so a guest's
    /// bare "\n" still starts a new line.
    public func enterRawMode() {
        guard isatty(fd) == 1 else { return }
        var t = termios()
        guard tcgetattr(fd, &t) == 0 else { return }
        Self.savedTermios = t
        Self.savedFD = fd
        let oflag = t.c_oflag
        cfmakeraw(&t)
        t.c_oflag = oflag
        _ = tcsetattr(fd, TCSANOW, &t)
        atexit { ConsoleInput.restoreTerminal() }
    }

    /// Undo `enterRawMode`. Safe to call more than once, from any exit path.
    public static func restoreTerminal() {
        guard var t = savedTermios else { return }
        _ = tcsetattr(savedFD, TCSANOW, &t)
        savedTermios = nil
    }

    public func start() -> HostThread {
        HostThread.start(name: "console-in") { [self] in self.pump() }
    }

    private func pump() {
        var buffer = [UInt8](repeating: 0, count: 256)
        var interrupts: [timespec] = []
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: stop.pollFD, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: serial.roomAvailable.fd, events: Int16(POLLIN), revents: 0)]
        while !stop.isStopping {
            let room = serial.receiveSpace
            // While the guest's receive buffer is full, leave the bytes in the host's buffer
            // and wait for the UART to say it has room.
            fds[0].events = room == 0 ? 0 : Int16(POLLIN)
            let r = poll(&fds, 3, room == 0 ? 100 : -1)
            if r < 0 && errno != EINTR { return }
            if fds[1].revents != 0 { return }
            if fds[2].revents != 0 { serial.roomAvailable.drain() }
            guard room > 0, fds[0].revents != 0 else { continue }
            let n = read(fd, &buffer, min(room, buffer.count))
            if n == 0 { return }                           // EOF: the guest just gets no more input
            if n < 0 { if errno == EINTR || errno == EAGAIN { continue }; return }
            if Self.savedTermios != nil {
                for b in buffer[0..<n] where b == 0x03 {
                    var now = timespec()
                    clock_gettime(CLOCK_MONOTONIC, &now)
                    interrupts.append(now)
                    interrupts = interrupts.filter { elapsedNs(from: $0, to: now) < 1_000_000_000 }
                    if interrupts.count >= 3 {
                        stop.stop(.interrupted(signal: SIGINT))
                        return
                    }
                }
            }
            _ = buffer.withUnsafeBytes { serial.receive(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        }
    }
}

@inline(__always)
func elapsedNs(from a: timespec, to b: timespec) -> Int64 {
    Int64(b.tv_sec - a.tv_sec) * 1_000_000_000 + Int64(b.tv_nsec - a.tv_nsec)
}
