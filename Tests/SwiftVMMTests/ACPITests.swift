import Foundation
import KernelLoading
import Memory
import Testing
import X86Platform

/// Little-endian reads for the tests.
private extension Array where Element == UInt8 {
    func u16(_ o: Int) -> UInt16 { UInt16(self[o]) | UInt16(self[o + 1]) << 8 }
    func u32(_ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(self[o + $1]) << (8 * $1) } }
    func u64(_ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(self[o + $1]) << (8 * $1) } }
    func ascii(_ o: Int, _ n: Int) -> String { String(decoding: self[o..<(o + n)], as: UTF8.self) }
}

private let window: Range<UInt64> = 0xC000_0000 ..< 0xFEC0_0000
private let devices = [ACPITables.PCIInterrupt(slot: 1, gsi: 10), .init(slot: 2, gsi: 11), .init(slot: 3, gsi: 5)]

private func tables(cpus: Int, pci: [ACPITables.PCIInterrupt] = devices) -> ACPITables {
    ACPITables(cpus: cpus, ioAPICID: MPTable.ioAPICID(cpus: cpus), pciInterrupts: pci, pciWindow: window,
               sleepControlPort: 0x600)
}

/// The MADT's entries as (type, bytes).
private func madtEntries(_ madt: [UInt8]) -> [(type: UInt8, bytes: [UInt8])] {
    var out: [(UInt8, [UInt8])] = []
    var at = 44
    while at < madt.count {
        let len = Int(madt[at + 1])
        out.append((madt[at], Array(madt[at..<(at + len)])))
        at += len
    }
    return out
}

// MARK: A small AML reader, enough for what swiftvmm writes

indirect enum AMLValue: Equatable {
    case integer(UInt64)
    case package([AMLValue])
    case buffer([UInt8])
}

indirect enum AMLTerm: Equatable {
    case scope(String, [AMLTerm])
    case device(String, [AMLTerm])
    case name(String, AMLValue)

    /// The object `path` names below this term ("PCI0._PRT").
    func find(_ path: String) -> AMLValue? {
        let parts = path.split(separator: ".", maxSplits: 1).map(String.init)
        switch self {
        case .scope(_, let terms), .device(_, let terms):
            for t in terms {
                switch t {
                case .name(let n, let v) where parts.count == 1 && n == parts[0]: return v
                case .device(let n, _) where parts.count == 2 && n == parts[0]: if let v = t.find(parts[1]) { return v }
                default: continue
                }
            }
            return nil
        case .name: return nil
        }
    }
}

struct AMLReader {
    let b: [UInt8]
    var at = 0
    init(_ bytes: [UInt8]) { b = bytes }

    enum Failure: Error, CustomStringConvertible {
        case bad(String, Int)
        var description: String { if case .bad(let w, let at) = self { return "\(w) at AML offset \(at)" }; return "" }
    }

    mutating func byte() throws -> UInt8 {
        guard at < b.count else { throw Failure.bad("unexpected end", at) }
        defer { at += 1 }
        return b[at]
    }

    /// PkgLength: returns the offset where the package ends.
    mutating func pkgEnd() throws -> Int {
        let start = at
        let lead = try byte()
        let extra = Int(lead >> 6)
        var length = extra == 0 ? Int(lead & 0x3F) : Int(lead & 0x0F)
        if extra > 0 && lead & 0x30 != 0 { throw Failure.bad("PkgLength lead byte bits 5-4 set", start) }
        for i in 0..<extra { length |= Int(try byte()) << (4 + 8 * i) }
        let end = start + length
        guard end <= b.count else { throw Failure.bad("package runs past the end (\(end) > \(b.count))", start) }
        return end
    }

    mutating func nameSeg() throws -> String {
        let s = String(decoding: (0..<4).map { _ in (try? byte()) ?? 0 }, as: UTF8.self)
        guard s.utf8.allSatisfy({ ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5F }) else {
            throw Failure.bad("bad NameSeg '\(s)'", at - 4)
        }
        return s
    }

    mutating func nameString() throws -> String {
        var prefix = ""
        if b[at] == 0x5C { prefix = "\\"; at += 1 }
        switch b[at] {
        case 0x2E: at += 1; return prefix + (try nameSeg()) + "." + (try nameSeg())
        case 0x2F:
            at += 1
            let n = Int(try byte())
            return prefix + (try (0..<n).map { _ in try nameSeg() }).joined(separator: ".")
        default: return prefix + (try nameSeg())
        }
    }

    mutating func value() throws -> AMLValue {
        let op = try byte()
        switch op {
        case 0x00: return .integer(0)
        case 0x01: return .integer(1)
        case 0x0A: return .integer(UInt64(try byte()))
        case 0x0B: return .integer(try (0..<2).reduce(UInt64(0)) { r, i in r | UInt64(try byte()) << (8 * i) })
        case 0x0C: return .integer(try (0..<4).reduce(UInt64(0)) { r, i in r | UInt64(try byte()) << (8 * i) })
        case 0x0E: return .integer(try (0..<8).reduce(UInt64(0)) { r, i in r | UInt64(try byte()) << (8 * i) })
        case 0x12:
            let end = try pkgEnd()
            let count = Int(try byte())
            var elements: [AMLValue] = []
            while at < end { elements.append(try value()) }
            guard elements.count == count, at == end else { throw Failure.bad("package count \(count), found \(elements.count)", at) }
            return .package(elements)
        case 0x11:
            let end = try pkgEnd()
            guard case .integer(let size) = try value() else { throw Failure.bad("buffer size", at) }
            guard at + Int(size) == end else { throw Failure.bad("buffer size \(size) disagrees with its PkgLength", at) }
            defer { at = end }
            return .buffer(Array(b[at..<end]))
        default: throw Failure.bad("unexpected opcode \(String(op, radix: 16))", at - 1)
        }
    }

    mutating func terms(until end: Int) throws -> [AMLTerm] {
        var out: [AMLTerm] = []
        while at < end {
            switch try byte() {
            case 0x10:
                let e = try pkgEnd()
                let n = try nameString()
                out.append(.scope(n, try terms(until: e)))
            case 0x5B:
                guard try byte() == 0x82 else { throw Failure.bad("only DeviceOp follows ExtOpPrefix here", at - 1) }
                let e = try pkgEnd()
                let n = try nameString()
                out.append(.device(n, try terms(until: e)))
            case 0x08:
                let n = try nameString()
                out.append(.name(n, try value()))
            default: throw Failure.bad("unexpected term opcode", at - 1)
            }
        }
        guard at == end else { throw Failure.bad("term list overruns its package", at) }
        return out
    }

    static func parse(_ aml: [UInt8]) throws -> [AMLTerm] {
        var r = AMLReader(aml)
        return try r.terms(until: aml.count)
    }
}

@Suite("ACPI tables")
struct ACPITests {
    @Test("every table sums to zero and has its length; the RSDP's two checksums", arguments: [1, 2, 4])
    func checksumsAndLengths(cpus: Int) {
        let t = tables(cpus: cpus)
        let r = t.rsdp.bytes
        #expect(r.count == 36)
        #expect(r.ascii(0, 8) == "RSD PTR ")
        #expect(r[0..<20].reduce(UInt8(0), &+) == 0)
        #expect(r.reduce(UInt8(0), &+) == 0)
        #expect(r[15] == 2)                                     // ACPI 2.0+
        #expect(r.u32(20) == 36)
        #expect(r.ascii(9, 6) == "SWVMM ")
        for (table, signature) in [(t.xsdt, "XSDT"), (t.fadt, "FACP"), (t.madt, "APIC"), (t.dsdt, "DSDT")] {
            let b = table.bytes
            #expect(b.ascii(0, 4) == signature)
            #expect(Int(b.u32(4)) == b.count, "\(signature) length")
            #expect(b.reduce(UInt8(0), &+) == 0, "\(signature) checksum")
            #expect(b.ascii(10, 6) == "SWVMM " && b.ascii(16, 8) == "SWIFTVMM" && b.ascii(28, 4) == "SVMM")
            #expect(b.u32(24) == 1 && b.u32(32) == 1)
        }
        #expect(t.fadt.bytes.count == 276 && t.fadt.bytes[8] == 6)
        #expect(t.xsdt.bytes.count == 36 + 16)
        #expect(t.madt.bytes.count == 44 + 8 * cpus + 12 + 10 + 6)
    }

    @Test("RSDP -> XSDT -> FADT, MADT; FADT -> DSDT; all in the BIOS area, 16-byte aligned, no overlaps")
    func pointers() {
        let t = tables(cpus: 2)
        #expect(t.rsdp.address == BootLayout.acpiRSDP && BootLayout.acpiRSDP == 0xE0000)
        #expect(t.rsdp.bytes.u64(24) == t.xsdt.address)
        #expect(t.rsdp.bytes.u32(16) == 0)                      // no RSDT
        #expect(t.xsdt.bytes.u64(36) == t.fadt.address)         // the FADT first
        #expect(t.xsdt.bytes.u64(44) == t.madt.address)
        #expect(UInt64(t.fadt.bytes.u32(40)) == t.dsdt.address)
        #expect(t.fadt.bytes.u64(140) == t.dsdt.address)
        var previousEnd = BootLayout.acpiRSDP
        for table in t.all {
            #expect(table.address % 16 == 0)
            #expect(table.address >= previousEnd)
            previousEnd = table.address + UInt64(table.bytes.count)
        }
        #expect(t.end <= BootLayout.acpiEnd)
        // The MP table (0x9FC00) ends long before.
        #expect(BootLayout.mpTable + UInt64(MPTable(cpus: 255).bytes.count) <= BootLayout.acpiRSDP)
        // Even with many vCPUs the tables stay below 1 MiB.
        #expect(tables(cpus: 1024, pci: (1...31).map { .init(slot: $0, gsi: 10) }).end <= BootLayout.acpiEnd)
    }

    @Test("FADT: hardware-reduced, reset register = 0xFE to port 0x64, legacy devices and i8042, MSI allowed")
    func fadt() {
        let f = tables(cpus: 1).fadt.bytes
        let flags = f.u32(112)
        #expect(flags & (1 << 20) != 0)                         // HW_REDUCED_ACPI
        #expect(flags & (1 << 10) != 0)                         // RESET_REG_SUP
        #expect(f.u16(109) & 0x3 == 0x3)                        // LEGACY_DEVICES, 8042
        #expect(f.u16(109) & (1 << 3) == 0)                     // not "MSI not present"
        #expect(f.u16(46) == 0)                                 // no SCI
        #expect(f.u32(76) == 0 && f[208] == 0)                  // no PM timer
        #expect(Array(f[116..<128]) == [1, 8, 0, 1, 0x64, 0, 0, 0, 0, 0, 0, 0])
        #expect(f[128] == 0xFE)
        #expect(f[108] == 0x32)                                 // CMOS century register
        #expect(f.ascii(268, 8) == "SWIFTVMM")
        // The hardware-reduced sleep registers: control at 0x600, status at 0x601 (SystemIO, 8 bits).
        #expect(Array(f[244..<256]) == [1, 8, 0, 1, 0x00, 0x06, 0, 0, 0, 0, 0, 0])
        #expect(Array(f[256..<268]) == [1, 8, 0, 1, 0x01, 0x06, 0, 0, 0, 0, 0, 0])
    }

    @Test("MADT: one enabled local APIC per vCPU, the IOAPIC, IRQ 0 -> GSI 0, LINT1 NMI", arguments: [1, 2, 4])
    func madt(cpus: Int) {
        let m = tables(cpus: cpus).madt.bytes
        #expect(m.u32(36) == 0xFEE0_0000)
        #expect(m.u32(40) == 1)                                 // PCAT_COMPAT
        let entries = madtEntries(m)
        let lapics = entries.filter { $0.type == 0 }
        #expect(lapics.count == cpus)
        for (i, e) in lapics.enumerated() {
            #expect(e.bytes.count == 8 && e.bytes[2] == UInt8(i) && e.bytes[3] == UInt8(i) && e.bytes.u32(4) == 1)
        }
        let ioapics = entries.filter { $0.type == 1 }
        #expect(ioapics.count == 1)
        if let io = ioapics.first?.bytes {
            #expect(io.count == 12 && io[2] == MPTable(cpus: cpus).ioAPICID && io.u32(4) == 0xFEC0_0000 && io.u32(8) == 0)
        }
        let overrides = entries.filter { $0.type == 2 }
        #expect(overrides.map(\.bytes) == [[2, 10, 0, 0, 0, 0, 0, 0, 0, 0]])
        let nmis = entries.filter { $0.type == 4 }
        #expect(nmis.map(\.bytes) == [[4, 6, 0xFF, 0, 0, 1]])
        #expect(entries.count == cpus + 3)
    }

    @Test("MADT with more than 255 vCPUs: x2APIC entries from APIC ID 255 on")
    func madtX2APIC() {
        let entries = madtEntries(tables(cpus: 300).madt.bytes)
        #expect(entries.filter { $0.type == 0 }.count == 255)
        let x2 = entries.filter { $0.type == 9 }
        #expect(x2.count == 45)
        #expect(x2.first.map { $0.bytes.u32(4) == 255 && $0.bytes.u32(8) == 1 && $0.bytes.u32(12) == 255 } == true)
        #expect(entries.filter { $0.type == 10 }.count == 1)
    }

    @Test("AML building blocks: PkgLength in 1-4 bytes, integers, EisaId, names")
    func amlEncoding() throws {
        #expect(AML.pkgLength(0) == [0x01])
        #expect(AML.pkgLength(62) == [0x3F])
        #expect(AML.pkgLength(63) == [0x41, 0x04])              // 65 = 0x41: lead 0x40 | 1, then 0x04
        #expect(AML.pkgLength(0xFFD) == [0x4F, 0xFF])            // 0xFFF
        #expect(AML.pkgLength(0xFFE) == [0x81, 0x00, 0x01])      // 0x1001
        #expect(AML.pkgLength(0x10_0000) == [0xC4, 0x00, 0x00, 0x01])   // 0x100004
        for payload in [0, 1, 62, 63, 64, 300, 4093, 4094, 5000, 70_000, 1 << 20] {
            var r = AMLReader(AML.pkgLength(payload) + [UInt8](repeating: 0, count: payload))
            #expect(try r.pkgEnd() == r.b.count, "PkgLength of \(payload)")
        }
        #expect(AML.integer(0) == [0x00] && AML.integer(1) == [0x01] && AML.integer(0xFF) == [0x0A, 0xFF])
        #expect(AML.integer(0x1234) == [0x0B, 0x34, 0x12])
        #expect(AML.integer(0x1_FFFF) == [0x0C, 0xFF, 0xFF, 0x01, 0x00])
        #expect(AML.integer(1 << 40) == [0x0E, 0, 0, 0, 0, 0, 1, 0, 0])
        #expect(AML.eisaID("PNP0A03") == [0x0C, 0x41, 0xD0, 0x0A, 0x03])
        #expect(AML.eisaID("PNP0501") == [0x0C, 0x41, 0xD0, 0x05, 0x01])
        #expect(AML.nameString("\\_SB") == [0x5C] + Array("_SB_".utf8))
        #expect(AML.nameString("\\_SB.PCI0") == [0x5C, 0x2E] + Array("_SB_PCI0".utf8))
        #expect(AML.nameString("A.B.C") == [0x2F, 3] + Array("A___B___C___".utf8))
        // A resource template: IO and IRQNoFlags, then the End Tag.
        #expect(AML.resourceTemplate([AML.Resource.io(0x3F8, length: 8), AML.Resource.irq(4)])
                == [0x11, 0x10, 0x0A, 0x0D, 0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08, 0x22, 0x10, 0x00, 0x79, 0x00])
    }

    @Test("the DSDT's AML decodes: \\_SB.PCI0 is a PNP0A03 root bridge with a _PRT entry per device; COM1, PS2K, RTC; no aux port")
    func dsdtDecodes() throws {
        let t = tables(cpus: 2)
        let terms = try AMLReader.parse(Array(t.dsdt.bytes[36...]))
        #expect(terms.count == 2)       // \_SB and \_S5
        guard case .scope(let name, let children)? = terms.first else { Issue.record("no scope: \(terms)"); return }
        #expect(name == "\\_SB_")
        let sb = terms[0]
        #expect(children.compactMap { if case .device(let n, _) = $0 { return n } else { return nil } } == ["PCI0", "COM1", "PS2K", "RTC_"])
        #expect(sb.find("PCI0._HID") == .integer(0x030A_D041))  // EisaId("PNP0A03") as the DWord it is
        #expect(sb.find("PCI0._UID") == .integer(0) && sb.find("PCI0._SEG") == .integer(0) && sb.find("PCI0._BBN") == .integer(0))
        #expect(sb.find("PCI0._PRT") == .package(devices.map { d in
            .package([.integer(UInt64(d.slot) << 16 | 0xFFFF), .integer(0), .integer(0), .integer(UInt64(d.gsi))])
        }))
        guard case .buffer(let crs)? = sb.find("PCI0._CRS") else { Issue.record("PCI0 has no _CRS buffer"); return }
        #expect(Array(crs.suffix(2)) == [0x79, 0x00])
        // Bus numbers 0-0xFF: the Word Address Space Descriptor.
        #expect(Array(crs.prefix(16)) == [0x88, 0x0D, 0x00, 0x02, 0x0C, 0x00, 0, 0, 0x00, 0x00, 0xFF, 0x00, 0, 0, 0x00, 0x01])
        #expect(sb.find("COM1._HID") == .integer(0x0105_D041))
        #expect(sb.find("PS2K._HID") == .integer(0x0303_D041))
        #expect(sb.find("RTC_._HID") == .integer(0x000B_D041))
        // No devices: an empty _PRT, still a valid package.
        let bare = try AMLReader.parse(Array(tables(cpus: 1, pci: []).dsdt.bytes[36...]))
        #expect(bare.first?.find("PCI0._PRT") == .package([]))
        // \_S5 at the root: "soft off" is sleep type 5, what the guest writes back to power off.
        #expect(terms.last == .name("\\_S5_", .package([.integer(5), .integer(5)])))
    }

    @Test("the reset vector at F000:FFF0 pulls the i8042's reset line, then halts; the tables end below it")
    func resetVector() {
        // mov al, 0xFE; out 0x64, al; hlt; jmp $-3 (back to the hlt)
        #expect(BootLayout.resetVectorStub == [0xB0, 0xFE, 0xE6, 0x64, 0xF4, 0xEB, 0xFD])
        #expect(BootLayout.resetVector == 0xF_0000 + 0xFFF0)
        #expect(BootLayout.resetVector + UInt64(BootLayout.resetVectorStub.count) <= 0x10_0000)
        #expect(tables(cpus: 1024).end <= BootLayout.acpiEnd && BootLayout.acpiEnd <= BootLayout.resetVector)
    }

    @Test("iasl -d disassembles the DSDT, MADT and FADT as we mean them (needs acpica-tools)")
    func iaslDisassembly() throws {
        let iasl = ["/usr/bin/iasl", "/usr/local/bin/iasl"].first { FileManager.default.isExecutableFile(atPath: $0) }
        if iasl == nil {
            Issue.record("iasl is not installed: install Debian's acpica-tools (scripts/setup should) to check the ACPI tables with the reference disassembler")
        }
        let tool = try #require(iasl)
        let t = tables(cpus: 2)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvmm-acpi-\(getpid())")
        try? FileManager.default.removeItem(at: dir)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        func disassemble(_ name: String, _ bytes: [UInt8]) throws -> String {
            let file = dir.appendingPathComponent("\(name).dat")
            try Data(bytes).write(to: file)
            let p = Process()
            p.executableURL = URL(fileURLWithPath: tool)
            p.arguments = ["-d", file.path]
            p.currentDirectoryURL = dir
            let out = Pipe()
            p.standardOutput = out
            p.standardError = out
            try p.run()
            let log = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            #expect(p.terminationStatus == 0, "iasl -d \(name): \(log)")
            let dsl = (try? String(contentsOf: dir.appendingPathComponent("\(name).dsl"), encoding: .utf8)) ?? ""
            #expect(!dsl.isEmpty, "iasl wrote no \(name).dsl: \(log)")
            #expect(!dsl.contains("Invalid") && !dsl.localizedCaseInsensitiveContains("error"), "\(name):\n\(dsl)")
            return dsl
        }
        let dsdt = try disassemble("dsdt", t.dsdt.bytes)
        for needle in ["DefinitionBlock (\"\", \"DSDT\", 2, \"SWVMM \", \"SWIFTVMM\", 0x00000001)",
                       "Scope (\\_SB)", "Device (PCI0)", "Name (_HID, EisaId (\"PNP0A03\")", "Name (_PRT, Package (0x03)",
                       "0x0001FFFF,", "0x0003FFFF,", "0x0A", "0x0B", "0x05",
                       "WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode,",
                       "WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange,",
                       "0x0CF7,", "0x0D00,", "0xFFFF,",
                       "DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,",
                       "0xC0000000,", "0xFEBFFFFF,", "0x3EC00000,",
                       "Device (COM1)", "EisaId (\"PNP0501\")", "0x03F8,", "IRQNoFlags ()", "{4}",
                       "Device (PS2K)", "EisaId (\"PNP0303\")", "{1}", "Device (RTC)", "EisaId (\"PNP0B00\")", "{8}"] {
            #expect(dsdt.contains(needle), "DSDT disassembly lacks \(needle):\n\(dsdt)")
        }
        #expect(!dsdt.contains("PNP0F13"), "no PS/2 mouse: \(dsdt)")
        let flatDSDT = dsdt.replacingOccurrences(of: #"\s+"#, with: " ", options: .regularExpression)
        #expect(flatDSDT.contains("Name (\\_S5, Package (0x02)") && flatDSDT.contains("{ 0x05, 0x05 })"), "\(dsdt)")
        let madt = try disassemble("apic", t.madt.bytes)
        for needle in ["Signature : \"APIC\"", "Local Apic Address : FEE00000", "PC-AT Compatibility : 1",
                       "Subtable Type : 00 [Processor Local APIC]", "Local Apic ID : 00", "Local Apic ID : 01",
                       "Subtable Type : 01 [I/O APIC]", "I/O Apic ID : 02", "Address : FEC00000",
                       "Subtable Type : 02 [Interrupt Source Override]", "Subtable Type : 04 [Local APIC NMI]"] {
            #expect(madt.replacingOccurrences(of: #"\s+"#, with: " ", options: .regularExpression).contains(needle),
                    "MADT disassembly lacks \(needle):\n\(madt)")
        }
        #expect(madt.components(separatedBy: "[Processor Local APIC]").count - 1 == 2)
        let fadt = try disassemble("facp", t.fadt.bytes)
        let flat = fadt.replacingOccurrences(of: #"\s+"#, with: " ", options: .regularExpression)
        for needle in ["Signature : \"FACP\"", "Revision : 06", "Hardware Reduced (V5) : 1",
                       "Reset Register Supported (V2) : 1", "Space ID : 01 [SystemIO] [075h 0117 1] Bit Width : 08",
                       "Address : 0000000000000064 [080h 0128 1] Value to cause reset : FE",
                       "Legacy Devices Supported (V2) : 1", "8042 Present on ports 60/64 (V2) : 1",
                       "MSI Not Supported (V4) : 0", "SCI Interrupt : 0000", "DSDT Address : 00000000000E",
                       "Address : 0000000000000600", "Address : 0000000000000601"] {
            #expect(flat.contains(needle), "FADT disassembly lacks \(needle):\n\(fadt)")
        }
    }
}

@Suite("ACPI pointers in the boot data")
struct ACPIBootDataTests {
    /// The RSDP at `address` in guest memory: signature and both checksums.
    static func validRSDP(_ memory: GuestMemory, at address: UInt64) -> Bool {
        let r = memory.bytes(at: address, count: 36)
        return r.ascii(0, 8) == "RSD PTR " && r[0..<20].reduce(UInt8(0), &+) == 0 && r.reduce(UInt8(0), &+) == 0
    }

    @Test("bzImage: boot_params.acpi_rsdp_addr (0x070) points at a valid RSDP in guest memory")
    func bzImage() throws {
        let memory = try GuestMemory(size: 256 << 20)
        _ = try KernelLoader.load(path: try DebianKernel.path("cloud", "vmlinuz"), into: memory, options: BootOptions(
            commandLine: "", reserved: [hypercallPage], acpiRSDP: BootLayout.acpiRSDP))
        try tables(cpus: 2).write(into: memory)
        let zp = zeroPage(in: memory)
        #expect(zp.get(UInt64.self, at: ZeroPage.acpiRSDPAddr) == 0xE0000)
        #expect(Self.validRSDP(memory, at: zp.get(UInt64.self, at: ZeroPage.acpiRSDPAddr)))
        // The setup header copied from the image is untouched by it (0x070 is before 0x1F1).
        #expect(zp.get(UInt32.self, at: ZeroPage.headerMagic) == 0x5372_6448)
    }

    @Test("ELF vmlinux: boot_params for the 64-bit entry, hvm_start_info.rsdp_paddr for PVH")
    func vmlinux() throws {
        let path = try DebianKernel.path("cloud", "vmlinux")
        for entry in [EntryChoice.linux64, .pvh] {
            let memory = try GuestMemory(size: 128 << 20)
            _ = try KernelLoader.load(path: path, into: memory, options: BootOptions(
                commandLine: "", entry: entry, acpiRSDP: BootLayout.acpiRSDP))
            try tables(cpus: 1).write(into: memory)
            #expect(zeroPage(in: memory).get(UInt64.self, at: ZeroPage.acpiRSDPAddr) == BootLayout.acpiRSDP)
            if entry == .pvh {
                #expect(memory.load(UInt64.self, at: BootLayout.pvhStartInfo + 32) == BootLayout.acpiRSDP)
            }
            #expect(Self.validRSDP(memory, at: BootLayout.acpiRSDP))
        }
        // Without tables (a caller that writes none) the pointers stay 0: the kernel scans.
        let memory = try GuestMemory(size: 128 << 20)
        _ = try KernelLoader.load(path: path, into: memory, options: BootOptions(commandLine: "", entry: .pvh))
        #expect(zeroPage(in: memory).get(UInt64.self, at: ZeroPage.acpiRSDPAddr) == 0)
        #expect(memory.load(UInt64.self, at: BootLayout.pvhStartInfo + 32) == 0)
    }
}
