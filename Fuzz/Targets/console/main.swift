// The console monitor fed any text through a Console, in chunks of any size: line assembly,
// timestamps, --expect and --fail-on patterns, the panic and power-off markers, and the oops
// tracker (RIP lines, call traces, the frame cap). Then the oops it kept is decoded against a
// System.map that names the functions the seeds use. Checked: at most maxFrames frames kept
// (the rest counted), every decoded frame is one the console showed, and the report renders.

import CrashReports
import Devices
import FuzzSupport
import RunControl

let symbols = Symbolizer(systemMap: """
    ffffffff81000000 T _text
    ffffffff81001000 T start_kernel
    ffffffff81001400 t rest_init
    ffffffff81002000 T kernel_init
    ffffffff81003000 T do_one_initcall
    ffffffff81004000 W panic
    ffffffffffffff00 T top_of_memory
    """)

@main enum Target { static func main() { runLibFuzzer(fuzz) } }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let stop = StopController()
    let monitor = try! ConsoleMonitor(expect: ["Run /init", "login: ?$"], failOn: ["BUG: .*"],
                                      detectPanic: input.bool(), stop: stop, timeline: nil)
    let console = Console(fd: -1, quiet: true, monitor: monitor)
    while !input.isEmpty {
        let chunk = input.take(Int(input.byte()) + 1)
        chunk.withUnsafeBytes { console.write($0) }
    }
    let progress = monitor.expectProgress
    fuzzCheck(progress.matched <= 2, "\(progress.matched) of 2 expectations matched")
    if let oops = monitor.oops {
        fuzzCheck(oops.frames.count <= ConsoleMonitor.maxFrames, "\(oops.frames.count) frames kept")
        fuzzCheck(oops.framesDropped == 0 || oops.frames.count == ConsoleMonitor.maxFrames, "frames dropped before the cap")
        let decoded = DecodedOops.decode(ripLine: oops.ripLine, callTrace: oops.frames, framesDropped: oops.framesDropped,
                                         symbols: symbols, lines: nil)
        fuzzCheck(decoded.frames.count == oops.frames.count + (oops.ripLine == nil ? 0 : 1), "decoded frame count")
        _ = decoded.text
        _ = decoded.json.serialized(indent: 2)
    }
    return 0
}
