import Glibc
import Lifecycle
import Synchronization

/// The guest's console as the host sees it: bytes from the serial port and the console
/// hypercall go to standard output (unless `quiet`), to the `--console-log` file if any, and
/// through the monitor that watches for panics and `--expect`/`--fail-on` patterns.
///
/// Writes go straight to the fds, unbuffered, so an interactive prompt appears at once and
/// nothing is left in a buffer when the VM ends, however it ends. A lock keeps a hypercall's
/// string whole when several vCPUs write at once, and serializes the monitor.
public final class Console: @unchecked Sendable {
    private let fd: Int32
    private let quiet: Bool
    private let logFD: Int32?
    private let monitor: ConsoleMonitor?
    private let timeline: Timeline?
    private let lock = Mutex<Void>(())

    public init(fd: Int32 = 1, quiet: Bool = false, logFD: Int32? = nil, monitor: ConsoleMonitor? = nil,
                timeline: Timeline? = nil) {
        self.fd = fd
        self.quiet = quiet
        self.logFD = logFD
        self.monitor = monitor
        self.timeline = timeline
    }

    @inline(__always)
    public func put(_ byte: UInt8) {
        var b = byte
        withUnsafeBytes(of: &b) { write($0) }
    }

    public func write(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        timeline?.markConsoleByte()
        lock.withLock { _ in
            if !quiet { Self.writeAll(fd, base, bytes.count) }
            if let logFD { Self.writeAll(logFD, base, bytes.count) }
            if let monitor { for b in bytes { monitor.feed(b) } }
        }
    }

    static func writeAll(_ fd: Int32, _ p: UnsafeRawPointer, _ count: Int) {
        var off = 0
        while off < count {
            let n = Glibc.write(fd, p + off, count - off)
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                return          // output gone (closed pipe): dropped, the guest goes on
            }
            off += n
        }
    }
}

/// Feeds standard input to the serial port, from its own thread.
///
/// When stdin is a terminal it is put in raw mode (keys go to the guest as typed, Ctrl-C
/// included) and restored on every way out. As in lguest, three Ctrl-C within one second end
/// the VM: the way out of a guest that ignores its console.
public final class ConsoleInput: @unchecked Sendable {
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
                   pollfd(fd: serial.roomAvailable, events: Int16(POLLIN), revents: 0)]
        while !stop.isStopping {
            let room = serial.receiveSpace
            // While the guest's receive buffer is full, leave the bytes in the host's buffer
            // and wait for the UART to say it has room.
            fds[0].events = room == 0 ? 0 : Int16(POLLIN)
            let r = poll(&fds, 3, room == 0 ? 100 : -1)
            if r < 0 && errno != EINTR { return }
            if fds[1].revents != 0 { return }
            if fds[2].revents != 0 { drainEventFD(serial.roomAvailable) }
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
            buffer.withUnsafeBytes { serial.receive(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        }
    }
}

@inline(__always)
func elapsedNs(from a: timespec, to b: timespec) -> Int64 {
    Int64(b.tv_sec - a.tv_sec) * 1_000_000_000 + Int64(b.tv_nsec - a.tv_nsec)
}
