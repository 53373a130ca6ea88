// The oops decoder and the symbol tables it resolves with, on any text: the input is a
// System.map, a NUL, then a RIP line and call-trace lines. Checked: every symbol is found at
// its own address, `describe` names the symbol `lookup` finds, resolved offsets are the ones
// the text gave, and the report renders as text and JSON.

import CrashReports
import FuzzSupport

@main enum Target { static func main() { runLibFuzzer(fuzz) } }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let bytes = input.rest()
    let split = bytes.firstIndex(of: 0) ?? bytes.count
    let map = String(decoding: bytes[..<split], as: UTF8.self)
    let trace = split < bytes.count ? String(decoding: bytes[(split + 1)...], as: UTF8.self) : ""
    let symbols = Symbolizer(systemMap: map)

    for s in symbols.symbols.prefix(64) {
        guard let found = symbols.lookup(s.address) else {
            fuzzCheck(false, "symbol \(s.name) at \(s.address) not found at its own address")
            return 0
        }
        fuzzCheck(found.symbol.address == s.address && found.offset == 0, "lookup(\(s.address)) gave \(found)")
        fuzzCheck(symbols.describe(s.address).hasSuffix("+0x0/0x\(String(found.symbol.size, radix: 16))"),
                  "describe(\(s.address)) is \(symbols.describe(s.address))")
        let byName = symbols.address(of: s.name)
        fuzzCheck(byName != nil, "symbol \(s.name) not found by name")
    }

    let lines = trace.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    let rip = lines.first.map { "RIP: " + $0 }
    let oops = DecodedOops.decode(ripLine: rip, callTrace: Array(lines.dropFirst()), framesDropped: lines.count % 3,
                                  symbols: symbols, lines: nil)
    fuzzCheck(oops.frames.count == lines.count, "\(oops.frames.count) frames decoded from \(lines.count) lines")
    for f in oops.frames {
        if let symbol = f.symbol, let offset = f.offset {
            fuzzCheck(f.text.contains(symbol), "frame \(f.text) resolved to \(symbol)+\(offset)")
        }
    }
    _ = oops.text
    _ = oops.json.serialized(indent: 2)
    return 0
}
