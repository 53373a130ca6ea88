import RunControl
import Synchronization

/// Watches the guest's console line by line and ends the run when a line decides it:
/// a kernel panic (once the stack trace after it is out), a `--fail-on` pattern, or the last
/// of the `--expect` patterns (which must match in the order given). It also keeps the last Linux-style oops it saw (the `RIP:` line
/// and the `Call Trace:` frames) so the frames can be resolved to source lines afterwards.
///
/// `feed` is called from whichever thread produced the bytes; a line is examined once, when
/// its newline arrives, inside the monitor's lock.
public final class ConsoleMonitor: Sendable {
    /// Unchecked Sendable: Swift's Regex is not, but a pattern is only matched inside the
    /// monitor's lock, one line at a time.
    public struct Pattern: @unchecked Sendable {
        public let text: String
        let regex: Regex<AnyRegexOutput>
    }

    public struct PatternError: Error, CustomStringConvertible {
        public let option: String
        public let pattern: String
        public let reason: String
        public var description: String { "\(option)=\(pattern): not a valid regular expression: \(reason)" }
    }

    /// The last oops seen on the console, as printed.
    public struct Oops: Sendable, Equatable {
        public var ripLine: String?
        public var frames: [String] = []
        /// Frame lines seen past `maxFrames` (not kept).
        public var framesDropped = 0
    }
    /// Frames kept per oops: Linux prints a few dozen; a guest printing frame-like lines
    /// forever must not grow swiftvmm's memory, nor the DWARF lookups done at the end.
    public static let maxFrames = 64

    public static let panicMarker = "Kernel panic - not syncing"
    /// Linux's last line of a panic, after the stack trace: "---[ end Kernel panic - not syncing: ... ]---".
    public static let panicEndMarker = "---[ end Kernel panic"
    /// How long the console may go on after the panic line for the stack trace that follows
    /// it (Linux prints it in milliseconds; the wait is only for a console cut short).
    public static let panicGrace = 1.0
    /// What Linux prints as its last words when it powers off or halts. On a PC without ACPI
    /// nothing else tells the VMM: the CPU just halts with interrupts off. Ending the run here
    /// turns a guest's `poweroff` into a clean exit 0 instead of a wait for the timeout.
    public static let powerOffMarkers = ["reboot: Power down", "reboot: System halted"]
    static let maxLine = 4096

    let expects: [Pattern]
    let failOns: [Pattern]
    let detectPanic: Bool
    let stop: StopController
    let timeline: Timeline?

    struct State {
        var line: [UInt8] = []
        var nextExpect = 0
        var collectingTrace = false
        var currentOops = Oops()
        var lastOops: Oops?
        /// A panic line was seen: the outcome is decided, the run stops at the panic's end line.
        var panicking = false
        /// The last lines, for a message when a run ends without saying why.
        var recent: [String] = []
    }
    private let state: Mutex<State>

    public init(expect: [String], failOn: [String], detectPanic: Bool, stop: StopController,
                timeline: Timeline?) throws(PatternError) {
        func compile(_ option: String, _ p: String) throws(PatternError) -> Pattern {
            do { return Pattern(text: p, regex: try Regex(p)) } catch {
                throw PatternError(option: option, pattern: p, reason: "\(error)")
            }
        }
        var e: [Pattern] = [], f: [Pattern] = []
        for p in expect { e.append(try compile("--expect", p)) }
        for p in failOn { f.append(try compile("--fail-on", p)) }
        expects = e
        failOns = f
        self.detectPanic = detectPanic
        self.stop = stop
        self.timeline = timeline
        var s = State()
        s.line.reserveCapacity(Self.maxLine)
        state = Mutex(s)
    }

    func feed(_ bytes: UnsafeRawBufferPointer) {
        state.withLock { s in
            for byte in bytes {
                if byte == UInt8(ascii: "\n") {
                    examine(&s)
                    s.line.removeAll(keepingCapacity: true)
                } else if s.line.count < Self.maxLine {
                    s.line.append(byte)
                }
            }
        }
    }

    /// How many `--expect` patterns have matched so far, and the next one (if any).
    public var expectProgress: (matched: Int, next: String?) {
        let next = state.withLock { $0.nextExpect }
        return (next, next < expects.count ? expects[next].text : nil)
    }

    public var hasExpectations: Bool { !expects.isEmpty }

    public static let recentLineCount = 16
    /// The console's last complete lines (up to `recentLineCount`), oldest first.
    public var recentLines: [String] { state.withLock { $0.recent } }

    /// The last complete oops (or the one being printed when the run ended).
    public var oops: Oops? {
        state.withLock { s in
            if s.currentOops.ripLine != nil || !s.currentOops.frames.isEmpty { return s.currentOops }
            return s.lastOops
        }
    }

    private func examine(_ s: inout State) {
        if s.line.last == UInt8(ascii: "\r") { s.line.removeLast() }
        let text = String(decoding: s.line, as: UTF8.self)
        if s.recent.count == Self.recentLineCount { s.recent.removeFirst() }
        s.recent.append(text)
        trackOops(&s, text)
        // After a panic line nothing else decides the run: keep the stack trace Linux prints
        // next, and stop at the panic's last line (or after panicGrace).
        if s.panicking {
            if text.contains(Self.panicEndMarker) { stop.stop(.kernelPanic(line: text)) }
            return
        }
        if detectPanic && text.contains(Self.panicMarker) {
            s.panicking = true
            stop.decide(.kernelPanic(line: text), stoppingWithin: Self.panicGrace)
            return
        }
        if Self.powerOffMarkers.contains(where: { text.contains($0) }) {
            stop.stop(.shutdown)
            return
        }
        for p in failOns where text.contains(p.regex) {
            stop.stop(.failOn(pattern: p.text, line: text))
            return
        }
        if s.nextExpect < expects.count && text.contains(expects[s.nextExpect].regex) {
            timeline?.markExpectMatch(expects[s.nextExpect].text)
            s.nextExpect += 1
            if s.nextExpect == expects.count {
                stop.stop(.expectationsMet(lastPattern: expects[s.nextExpect - 1].text, line: text))
            }
        }
    }

    /// Linux prints `RIP: 0010:kernel_init+0x77/0x106`, then `Call Trace:` and one frame per
    /// line (`  do_one_initcall+0x41/0x1e0`, possibly `? ` prefixed, between `<TASK>` lines),
    /// each line perhaps behind a `[    1.234567] ` timestamp.
    private func trackOops(_ s: inout State, _ raw: String) {
        var text = Substring(raw)
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            text = text[text.index(after: close)...]
        }
        let trimmed = text.drop { $0 == " " || $0 == "\t" }
        if trimmed.hasPrefix("RIP: ") {
            // Inside a call trace, a RIP line is the register dump of where the trace ends (a
            // system call from user space: "RIP: 0033:0x47b7a0"), not a new oops.
            if s.collectingTrace { s.collectingTrace = false; return }
            if s.currentOops.ripLine != nil || !s.currentOops.frames.isEmpty { s.lastOops = s.currentOops }
            s.currentOops = Oops(ripLine: String(trimmed), frames: [])
            s.collectingTrace = false
            return
        }
        if trimmed.hasPrefix("Call Trace:") {
            s.collectingTrace = true
            return
        }
        guard s.collectingTrace else { return }
        if trimmed == "<TASK>" || trimmed == "<IRQ>" || trimmed == "</IRQ>" { return }
        if trimmed == "</TASK>" || trimmed.hasPrefix("---[ end trace") || !Self.looksLikeFrame(trimmed) {
            s.collectingTrace = false
            return
        }
        if s.currentOops.frames.count < Self.maxFrames {
            s.currentOops.frames.append(String(trimmed))
        } else {
            s.currentOops.framesDropped += 1
        }
    }

    /// `symbol+0xoff/0xsize`, optionally behind `? ` and followed by ` [module]`.
    static func looksLikeFrame(_ s: Substring) -> Bool {
        let body = s.hasPrefix("? ") ? s.dropFirst(2) : s
        guard let plus = body.firstIndex(of: "+") else { return false }
        let name = body[..<plus]
        return !name.isEmpty && !name.contains(" ") && body[plus...].hasPrefix("+0x")
    }
}
