// CrashReports: what swiftvmm says when a run ends badly. A vCPU exit the VMM cannot continue
// from gets a FaultReport on the spot (which exit, where, the instruction bytes); at the end
// CrashReport reads every stopped vCPU's registers and walks its stack, and DecodedOops
// resolves an oops Linux printed on the console to source lines. Symbolizer (from the
// kernel's symbol table or a System.map) and SourceLines (its DWARF, through libdw) turn
// addresses into names and lines for both.

import CKVM
import HostSupport
import KVM
import Memory

/// The state of every vCPU when a run ended badly: registers (general, segment, control,
/// EFER), the instruction bytes at RIP, and — with symbols — RIP and a best-effort stack walk
/// (following the frame-pointer chain) as `symbol+offset`.
public struct CrashReport: Sendable {
    public struct VCPUState: Sendable {
        public let id: Int
        public let regs: kvm_regs?
        public let sregs: kvm_sregs?
        public let instructionBytes: [UInt8]
        /// RIP and the return addresses found, innermost first, as `symbol+0xoff/0xsize`.
        public let stack: [String]
    }

    public let vcpus: [VCPUState]

    /// Read the state of stopped vCPUs (only those whose threads have returned: a vCPU still
    /// inside KVM_RUN holds its lock, and asking would hang).
    public static func capture(_ vcpus: [VCPU], memory: GuestMemory, symbols: Symbolizer?) -> CrashReport {
        CrashReport(vcpus: vcpus.map { vcpu in
            let regs = try? vcpu.regs()
            let sregs = try? vcpu.sregs()
            var bytes: [UInt8] = []
            var stack: [String] = []
            if let r = regs {
                if let p = vcpu.translate(r.rip) { bytes = memory.bytes(at: p, count: 15) }
                var frames = walkStack(vcpu, memory: memory, rip: r.rip, rbp: r.rbp)
                // A leaf function often sets up no frame of its own: then its return address
                // is on top of the stack and the rbp chain starts at its caller's caller.
                if let symbols, let p = vcpu.translate(r.rsp), let top = memory.load(UInt64.self, at: p),
                   let caller = symbols.lookup(top), caller.offset > 0,
                   symbols.lookup(r.rip)?.symbol != caller.symbol,
                   frames.count < 2 || symbols.lookup(frames[1])?.symbol != caller.symbol {
                    frames.insert(top, at: 1)
                }
                stack = frames.map { symbols?.describe($0) ?? Diagnostics.hex($0) }
            }
            return VCPUState(id: vcpu.id, regs: regs, sregs: sregs, instructionBytes: bytes, stack: stack)
        })
    }

    /// RIP, then the return address saved next to each frame pointer: [rbp] is the caller's
    /// rbp, [rbp+8] the return address. Stops at anything implausible.
    static func walkStack(_ vcpu: VCPU, memory: GuestMemory, rip: UInt64, rbp: UInt64) -> [UInt64] {
        var frames = [rip]
        var bp = rbp
        for _ in 0..<32 {
            // The guest's rbp is any number: near the top of the address space, bp + 8 wraps.
            guard bp != 0, bp & 7 == 0, bp <= UInt64.max - 8,
                  let p = vcpu.translate(bp), let q = vcpu.translate(bp + 8),
                  let saved = memory.load(UInt64.self, at: p), let ret = memory.load(UInt64.self, at: q),
                  ret != 0 else { break }
            frames.append(ret)
            guard saved > bp else { break }
            bp = saved
        }
        return frames
    }

    public var text: String {
        var lines: [String] = []
        for v in vcpus {
            lines.append("  vCPU \(v.id):")
            if !v.instructionBytes.isEmpty {
                lines.append("    instruction bytes at RIP: " + v.instructionBytes.map(hexByte).joined(separator: " "))
            }
            if let r = v.regs { lines += FaultReport.format(regs: r).map { "  " + $0 } }
            if let s = v.sregs { lines += FaultReport.format(sregs: s).map { "  " + $0 } }
            if !v.stack.isEmpty {
                lines.append("    stack (frame pointers, innermost first):")
                lines += v.stack.map { "      " + $0 }
            }
        }
        return lines.joined(separator: "\n")
    }

    public var json: JSON {
        .array(vcpus.map { v in
            var fields: [(String, JSON)] = [("id", .int(Int64(v.id)))]
            if let r = v.regs {
                let named: [(String, UInt64)] = [
                    ("rax", r.rax), ("rbx", r.rbx), ("rcx", r.rcx), ("rdx", r.rdx), ("rsi", r.rsi), ("rdi", r.rdi),
                    ("rbp", r.rbp), ("rsp", r.rsp), ("r8", r.r8), ("r9", r.r9), ("r10", r.r10), ("r11", r.r11),
                    ("r12", r.r12), ("r13", r.r13), ("r14", r.r14), ("r15", r.r15), ("rip", r.rip), ("rflags", r.rflags),
                ]
                fields.append(("regs", .object(named.map { ($0.0, .string(Diagnostics.hex($0.1))) })))
            }
            if let s = v.sregs {
                func seg(_ g: kvm_segment) -> JSON {
                    .object([("selector", .string(Diagnostics.hex(g.selector))), ("base", .string(Diagnostics.hex(g.base))),
                             ("limit", .string(Diagnostics.hex(g.limit))), ("type", .int(Int64(g.type))),
                             ("l", .int(Int64(g.l))), ("db", .int(Int64(g.db))), ("dpl", .int(Int64(g.dpl)))])
                }
                fields.append(("sregs", .object([
                    ("cs", seg(s.cs)), ("ds", seg(s.ds)), ("es", seg(s.es)), ("fs", seg(s.fs)), ("gs", seg(s.gs)),
                    ("ss", seg(s.ss)), ("tr", seg(s.tr)),
                    ("cr0", .string(Diagnostics.hex(s.cr0))), ("cr2", .string(Diagnostics.hex(s.cr2))),
                    ("cr3", .string(Diagnostics.hex(s.cr3))), ("cr4", .string(Diagnostics.hex(s.cr4))),
                    ("efer", .string(Diagnostics.hex(s.efer))),
                ])))
            }
            fields.append(("instruction_bytes", .string(v.instructionBytes.map(hexByte).joined(separator: " "))))
            fields.append(("stack", .array(v.stack.map { .string($0) })))
            return .object(fields)
        })
    }
}

/// An instruction byte as objdump shows it: two hex digits.
func hexByte(_ b: UInt8) -> String {
    let s = String(b, radix: 16)
    return s.count == 1 ? "0" + s : s
}

/// Resolves the frames of a Linux-style oops seen on the console (`RIP: 0010:func+0x77/0x106`
/// and the `Call Trace:` lines) to source lines, through the kernel's symbols and DWARF.
public struct DecodedOops: Sendable {
    public struct Frame: Sendable {
        public let text: String
        public let symbol: String?
        public let offset: UInt64?
        public let location: SourceLines.Location?
    }
    public let frames: [Frame]
    /// Frames the console showed beyond those kept (the console monitor caps them).
    public var framesDropped = 0

    /// `ripLine` and `callTrace` as the console monitor collected them.
    public static func decode(ripLine: String?, callTrace: [String], framesDropped: Int = 0,
                              symbols: Symbolizer, lines: SourceLines?) -> DecodedOops {
        var frames: [Frame] = []
        if let rip = ripLine {
            // "RIP: 0010:func+0x77/0x106": the segment selector, then the frame.
            var body = Substring(rip.dropFirst("RIP: ".count))
            if let colon = body.firstIndex(of: ":"), body[..<colon].allSatisfy(\.isHexDigit) {
                body = body[body.index(after: colon)...]
            }
            frames.append(resolve(String(body), isReturnAddress: false, symbols, lines))
        }
        for f in callTrace { frames.append(resolve(f, isReturnAddress: true, symbols, lines)) }
        return DecodedOops(frames: frames, framesDropped: framesDropped)
    }

    /// A call-trace entry is a return address: the call itself is the byte before it, which is
    /// what a source line should point at (as addr2line users subtract one).
    static func resolve(_ text: String, isReturnAddress: Bool, _ symbols: Symbolizer, _ lines: SourceLines?) -> Frame {
        var body = Substring(text)
        if body.hasPrefix("? ") { body = body.dropFirst(2) }
        if let space = body.firstIndex(of: " ") { body = body[..<space] }
        guard let plus = body.firstIndex(of: "+") else { return Frame(text: text, symbol: nil, offset: nil, location: nil) }
        let name = String(body[..<plus])
        var offText = body[body.index(after: plus)...]
        if let slash = offText.firstIndex(of: "/") { offText = offText[..<slash] }
        if offText.hasPrefix("0x") { offText = offText.dropFirst(2) }
        guard let offset = UInt64(offText, radix: 16), let sym = symbols.address(of: name) else {
            return Frame(text: text, symbol: name, offset: nil, location: nil)
        }
        // The offset is console text, any 64-bit number: an address that would wrap is not one.
        let (sum, wrapped) = sym.address.addingReportingOverflow(offset)
        guard !wrapped else { return Frame(text: text, symbol: name, offset: offset, location: nil) }
        let address = sum - (isReturnAddress && offset > 0 ? 1 : 0)
        return Frame(text: text, symbol: name, offset: offset, location: lines?.location(of: address))
    }

    public var text: String {
        let width = frames.map(\.text.count).max() ?? 0
        var lines = frames.map { f in
            let pad = String(repeating: " ", count: max(0, width - f.text.count))
            return "  \(f.text)\(pad)  \(f.location?.description ?? "?")"
        }
        if framesDropped > 0 { lines.append("  (\(framesDropped) more frame lines not kept)") }
        return lines.joined(separator: "\n")
    }

    public var json: JSON {
        .array(frames.map { f in
            .object([("frame", .string(f.text)), ("symbol", .optional(f.symbol)),
                     ("offset", f.offset.map { .string(Diagnostics.hex($0)) } ?? .null),
                     ("file", .optional(f.location?.file)), ("line", f.location.map { .int(Int64($0.line)) } ?? .null)])
        })
    }
}
