/// Just enough ACPI Machine Language to write swiftvmm's DSDT: names, scopes, devices,
/// packages, integers and resource templates. AML is a byte code the guest's ACPI
/// interpreter walks (ACPI 6.5, chapter 20); what we need of it is declarations only, no
/// methods, so the encoder is a handful of functions that each return the bytes of one term.
///
///     Scope (\_SB) { Device (PCI0) { Name (_HID, EisaId ("PNP0A03")) } }
///     AML.scope("\\_SB", [AML.device("PCI0", [AML.name("_HID", AML.eisaID("PNP0A03"))])])
public enum AML {
    // Opcodes (ACPI 6.5, 20.3).
    static let zeroOp: UInt8 = 0x00
    static let oneOp: UInt8 = 0x01
    static let nameOp: UInt8 = 0x08
    static let bytePrefix: UInt8 = 0x0A
    static let wordPrefix: UInt8 = 0x0B
    static let dwordPrefix: UInt8 = 0x0C
    static let qwordPrefix: UInt8 = 0x0E
    static let scopeOp: UInt8 = 0x10
    static let bufferOp: UInt8 = 0x11
    static let packageOp: UInt8 = 0x12
    static let extOpPrefix: UInt8 = 0x5B
    static let deviceOp: UInt8 = 0x82          // after ExtOpPrefix
    static let rootChar: UInt8 = 0x5C          // '\'
    static let dualNamePrefix: UInt8 = 0x2E
    static let multiNamePrefix: UInt8 = 0x2F

    /// A NameSeg is always four characters: shorter names are padded with '_' ("_SB" is
    /// "_SB_"). Upper-case letters, digits and '_' only, the first not a digit.
    public static func nameSeg(_ name: String) -> [UInt8] {
        var seg = Array(name.utf8)
        precondition(!seg.isEmpty && seg.count <= 4, "AML name segment '\(name)' must be 1-4 characters")
        precondition(seg.allSatisfy { ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5F }
                     && !(seg[0] >= 0x30 && seg[0] <= 0x39), "AML name segment '\(name)' has invalid characters")
        while seg.count < 4 { seg.append(0x5F) }
        return seg
    }

    /// A path: "\_SB.PCI0" (from the root) or "PCI0" (relative). Two segments take a
    /// DualNamePrefix, more a MultiNamePrefix and a count.
    public static func nameString(_ path: String) -> [UInt8] {
        var out: [UInt8] = []
        var rest = Substring(path)
        if rest.hasPrefix("\\") { out.append(rootChar); rest = rest.dropFirst() }
        let segs = rest.split(separator: ".", omittingEmptySubsequences: false).map { nameSeg(String($0)) }
        switch segs.count {
        case 1: out += segs[0]
        case 2: out += [dualNamePrefix] + segs[0] + segs[1]
        default: out += [multiNamePrefix, UInt8(segs.count)] + segs.flatMap { $0 }
        }
        return out
    }

    /// PkgLength: the length of a package *including the PkgLength bytes themselves*, in 1 to 4
    /// bytes. One byte holds up to 63; otherwise bits 7-6 of the lead byte count the bytes that
    /// follow, its bits 3-0 are the low nibble and each following byte the next 8 bits.
    public static func pkgLength(_ payload: Int) -> [UInt8] {
        if payload + 1 < 0x40 { return [UInt8(payload + 1)] }
        for extra in 1...3 {
            let total = payload + 1 + extra
            guard total < 1 << (4 + 8 * extra) else { continue }
            var out = [UInt8(extra << 6) | UInt8(total & 0x0F)]
            for i in 0..<extra { out.append(UInt8(truncatingIfNeeded: total >> (4 + 8 * i))) }
            return out
        }
        preconditionFailure("AML package of \(payload) bytes is larger than PkgLength can say (256 MiB)")
    }

    /// An integer in the shortest encoding: ZeroOp, OneOp, or a Byte/Word/DWord/QWord constant.
    public static func integer(_ value: UInt64) -> [UInt8] {
        switch value {
        case 0: return [zeroOp]
        case 1: return [oneOp]
        case ...0xFF: return [bytePrefix, UInt8(value)]
        case ...0xFFFF: return [wordPrefix] + le(value, 2)
        case ...0xFFFF_FFFF: return [dwordPrefix] + le(value, 4)
        default: return [qwordPrefix] + le(value, 8)
        }
    }

    /// EisaId("PNP0A03"): three letters of five bits each (A = 1) and four hex digits, packed
    /// into 32 bits stored big-endian, as a DWordConst: "PNP0A03" is 0C 41 D0 0A 03.
    public static func eisaID(_ id: String) -> [UInt8] {
        let c = Array(id.utf8)
        precondition(c.count == 7 && c[0..<3].allSatisfy { $0 >= 0x41 && $0 <= 0x5A }, "EISA ID '\(id)' is not AAA#### ")
        guard let product = UInt16(String(decoding: c[3...], as: UTF8.self), radix: 16) else {
            preconditionFailure("EISA ID '\(id)' does not end in four hex digits")
        }
        let vendor = UInt16(c[0] - 0x40) << 10 | UInt16(c[1] - 0x40) << 5 | UInt16(c[2] - 0x40)
        return [dwordPrefix, UInt8(vendor >> 8), UInt8(vendor & 0xFF), UInt8(product >> 8), UInt8(product & 0xFF)]
    }

    /// Name (NAME, object)
    public static func name(_ name: String, _ object: [UInt8]) -> [UInt8] {
        [nameOp] + nameString(name) + object
    }

    /// Scope (path) { terms }
    public static func scope(_ path: String, _ terms: [[UInt8]]) -> [UInt8] {
        let body = nameString(path) + terms.flatMap { $0 }
        return [scopeOp] + pkgLength(body.count) + body
    }

    /// Device (NAME) { terms }: ExtOpPrefix DeviceOp PkgLength NameString TermList.
    public static func device(_ name: String, _ terms: [[UInt8]]) -> [UInt8] {
        let body = nameString(name) + terms.flatMap { $0 }
        return [extOpPrefix, deviceOp] + pkgLength(body.count) + body
    }

    /// Package () { elements }: PackageOp PkgLength NumElements (one byte) elements.
    public static func package(_ elements: [[UInt8]]) -> [UInt8] {
        precondition(elements.count <= 255, "AML package of \(elements.count) elements needs a VarPackage")
        let body = [UInt8(elements.count)] + elements.flatMap { $0 }
        return [packageOp] + pkgLength(body.count) + body
    }

    /// Buffer () { bytes }: BufferOp PkgLength BufferSize (an integer term) bytes.
    public static func buffer(_ bytes: [UInt8]) -> [UInt8] {
        let body = integer(UInt64(bytes.count)) + bytes
        return [bufferOp] + pkgLength(body.count) + body
    }

    /// ResourceTemplate () { descriptors }: a Buffer of resource descriptors closed by an
    /// End Tag (its checksum byte 0: "no checksum", as iasl writes it).
    public static func resourceTemplate(_ descriptors: [[UInt8]]) -> [UInt8] {
        buffer(descriptors.flatMap { $0 } + [0x79, 0x00])
    }

    static func le(_ value: UInt64, _ count: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
    }
}

/// Resource descriptors (ACPI 6.5, 6.4): the contents of a `_CRS`. Small items have a one-byte
/// tag (type << 3 | length), large items a tag byte and a 16-bit length.
extension AML {
    public enum Resource {
        /// IO (Decode16, base, base, 1, length): a fixed range of I/O ports.
        public static func io(_ base: UInt16, length: UInt8) -> [UInt8] {
            [0x47, 0x01] + le(UInt64(base), 2) + le(UInt64(base), 2) + [0x01, length]
        }

        /// IRQNoFlags () { irq }: an ISA interrupt, edge-triggered, active high.
        public static func irq(_ irq: Int) -> [UInt8] {
            precondition(irq >= 0 && irq < 16, "ISA IRQ \(irq) out of range")
            return [0x22] + le(UInt64(1) << irq, 2)
        }

        /// The Address Space Descriptors a host bridge uses for its windows: resource type
        /// (0 memory, 1 I/O, 2 bus numbers), a producer with fixed minimum and maximum
        /// (general flags 0x0C), type-specific flags, then granularity, minimum, maximum,
        /// translation offset and length, each `width` bytes.
        static func addressSpace(tag: UInt8, width: Int, type: UInt8, typeFlags: UInt8,
                                 range: ClosedRange<UInt64>) -> [UInt8] {
            let fields = [UInt64(0), range.lowerBound, range.upperBound, 0, range.upperBound - range.lowerBound + 1]
            let body: [UInt8] = [type, 0x0C, typeFlags] + fields.flatMap { le($0, width) }
            return [tag] + le(UInt64(body.count), 2) + body
        }

        /// WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, min, max, 0, count)
        public static func busNumbers(_ range: ClosedRange<UInt16>) -> [UInt8] {
            addressSpace(tag: 0x88, width: 2, type: 2, typeFlags: 0,
                         range: UInt64(range.lowerBound)...UInt64(range.upperBound))
        }

        /// WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, min, max, 0, count)
        public static func ioWindow(_ range: ClosedRange<UInt16>) -> [UInt8] {
            addressSpace(tag: 0x88, width: 2, type: 1, typeFlags: 0x03,
                         range: UInt64(range.lowerBound)...UInt64(range.upperBound))
        }

        /// DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,
        /// 0, min, max, 0, length)
        public static func memoryWindow(_ range: ClosedRange<UInt32>) -> [UInt8] {
            addressSpace(tag: 0x87, width: 4, type: 0, typeFlags: 0x01,
                         range: UInt64(range.lowerBound)...UInt64(range.upperBound))
        }
    }
}
