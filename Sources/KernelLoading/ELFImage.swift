import CLibElf
import Glibc

/// An ELF kernel as its program headers describe it, parsed with libelf.
public struct ELFImage: Sendable {
    public enum Class: Sendable { case elf32, elf64 }

    public struct Segment: Sendable, Equatable {
        public let virtualAddress: UInt64
        public let physicalAddress: UInt64
        public let fileOffset: UInt64
        public let fileSize: UInt64
        public let memorySize: UInt64
        public let flags: UInt32
    }

    public struct Symbol: Sendable, Equatable {
        public let name: String
        public let value: UInt64
        public let size: UInt64
        public let isFunction: Bool
    }

    public let path: String
    public let elfClass: Class
    public let machine: UInt16
    public let entry: UInt64
    /// PT_LOAD segments with a non-zero memory size, in file order.
    public let segments: [Segment]
    /// The 32-bit PVH entry from a Xen ELF note of type 18 (XEN_ELFNOTE_PHYS32_ENTRY), if any.
    public let pvhEntry: UInt64?

    public static let xenNotePhys32Entry: UInt32 = 18

    public static func isELF(_ bytes: [UInt8]) -> Bool {
        bytes.count >= 4 && bytes[0] == 0x7F && bytes[1] == 0x45 && bytes[2] == 0x4C && bytes[3] == 0x46
    }

    /// Parse `bytes` (the whole file). Validates everything the loader will later trust:
    /// class, machine, and that each segment's file range lies inside the file.
    public init(bytes: [UInt8], path: String) throws(BootError) {
        guard Self.isELF(bytes) else { throw .notAKernel(path: path, reason: "no ELF magic") }
        let parsed: Result<(Class, UInt16, UInt64, [Segment]), BootError> = Self.withElf(bytes) { elf in
            guard let elf, elf_kind(elf) == ELF_K_ELF else {
                return .failure(.notAKernel(path: path, reason: "libelf cannot read it (\(Self.elfError()))"))
            }
            let cls: Class
            switch gelf_getclass(elf) {
            case Int32(ELFCLASS64): cls = .elf64
            case Int32(ELFCLASS32): cls = .elf32
            default: return .failure(.notAKernel(path: path, reason: "unknown ELF class"))
            }
            var ehdr = GElf_Ehdr()
            guard gelf_getehdr(elf, &ehdr) != nil else {
                return .failure(.notAKernel(path: path, reason: "bad ELF header (\(Self.elfError()))"))
            }
            guard ehdr.e_machine == UInt16(EM_X86_64) || ehdr.e_machine == UInt16(EM_386) else {
                return .failure(.unsupported(path: path, reason: "ELF for machine \(ehdr.e_machine), not x86"))
            }
            var count = 0
            guard elf_getphdrnum(elf, &count) == 0 else {
                return .failure(.notAKernel(path: path, reason: "bad program headers (\(Self.elfError()))"))
            }
            var segments: [Segment] = []
            for i in 0..<count {
                var ph = GElf_Phdr()
                guard gelf_getphdr(elf, Int32(i), &ph) != nil else {
                    return .failure(.notAKernel(path: path, reason: "bad program header \(i) (\(Self.elfError()))"))
                }
                guard ph.p_type == UInt32(PT_LOAD), ph.p_memsz > 0 else { continue }
                let (end, overflow) = ph.p_offset.addingReportingOverflow(ph.p_filesz)
                guard !overflow, end <= UInt64(bytes.count) else {
                    return .failure(.notAKernel(path: path, reason: "segment \(i) extends past the end of the file (truncated?)"))
                }
                guard ph.p_filesz <= ph.p_memsz else {
                    return .failure(.notAKernel(path: path, reason: "segment \(i) has more file bytes than memory bytes"))
                }
                segments.append(Segment(virtualAddress: ph.p_vaddr, physicalAddress: ph.p_paddr,
                                        fileOffset: ph.p_offset, fileSize: ph.p_filesz,
                                        memorySize: ph.p_memsz, flags: ph.p_flags))
            }
            return .success((cls, ehdr.e_machine, ehdr.e_entry, segments))
        }
        let (cls, machine, entry, segments) = try parsed.get()
        guard !segments.isEmpty else { throw .notAKernel(path: path, reason: "no loadable segments") }
        self.path = path
        self.elfClass = cls
        self.machine = machine
        self.entry = entry
        self.segments = segments
        self.pvhEntry = Self.findPVHEntry(bytes, cls)
    }

    /// Run `body` with a libelf handle on `bytes` (kept alive for the duration).
    static func withElf<R>(_ bytes: [UInt8], _ body: (OpaquePointer?) -> R) -> R {
        elf_version(UInt32(EV_CURRENT))
        var copy = bytes
        return copy.withUnsafeMutableBytes { buf in
            let elf = elf_memory(buf.baseAddress!.assumingMemoryBound(to: CChar.self), buf.count)
            defer { if let elf { elf_end(elf) } }
            return body(elf)
        }
    }

    static func elfError() -> String {
        guard let m = elf_errmsg(-1) else { return "unknown error" }
        return String(cString: m)
    }

    /// Walk the PT_NOTE segments by hand (each note: namesz, descsz, type, name, desc; name
    /// and desc padded to 4 bytes) looking for Xen's PHYS32_ENTRY.
    static func findPVHEntry(_ bytes: [UInt8], _ cls: Class) -> UInt64? {
        withElf(bytes) { elf -> UInt64? in
            guard let elf else { return nil }
            var count = 0
            guard elf_getphdrnum(elf, &count) == 0 else { return nil }
            for i in 0..<count {
                var ph = GElf_Phdr()
                guard gelf_getphdr(elf, Int32(i), &ph) != nil, ph.p_type == UInt32(PT_NOTE) else { continue }
                let (end, overflow) = ph.p_offset.addingReportingOverflow(ph.p_filesz)
                guard !overflow, end <= UInt64(bytes.count) else { continue }
                var off = Int(ph.p_offset)
                let stop = Int(end)
                func u32(_ at: Int) -> UInt32 {
                    UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
                }
                while off + 12 <= stop {
                    let namesz = Int(u32(off)), descsz = Int(u32(off + 4)), type = u32(off + 8)
                    let nameAt = off + 12
                    let descAt = nameAt + ((namesz + 3) & ~3)
                    let next = descAt + ((descsz + 3) & ~3)
                    guard namesz < 256, descsz < 1 << 20, next <= stop, next > off else { break }
                    let name = bytes[nameAt..<nameAt + namesz].prefix { $0 != 0 }
                    if Array(name) == Array("Xen".utf8) && type == xenNotePhys32Entry && (descsz == 4 || descsz == 8) {
                        var v: UInt64 = 0
                        for k in 0..<min(descsz, 8) { v |= UInt64(bytes[descAt + k]) << (8 * UInt64(k)) }
                        return descsz == 4 ? v & 0xFFFF_FFFF : v
                    }
                    off = next
                }
            }
            return nil
        }
    }

    /// The `Linux version ...` banner inside an uncompressed kernel, if it is one.
    public static func linuxVersion(in bytes: [UInt8]) -> String? {
        let needle = Array("Linux version ".utf8)
        return bytes.withUnsafeBytes { buf -> String? in
            needle.withUnsafeBytes { n -> String? in
                guard let base = buf.baseAddress else { return nil }
                // memchr for the first byte, then compare: tens of MiB in a few ms.
                var from = 0
                var found: Int? = nil
                while from + n.count <= buf.count {
                    guard let p = memchr(base + from, Int32(needle[0]), buf.count - from - n.count + 1) else { break }
                    let at = UnsafeRawPointer(p) - base
                    if memcmp(base + at, n.baseAddress!, n.count) == 0 { found = at; break }
                    from = at + 1
                }
                guard let start = found else { return nil }
                var end = start
                while end < buf.count && end - start < 300 && buf[end] != 0 && buf[end] != 0x0A { end += 1 }
                return String(decoding: buf[start ..< end], as: UTF8.self)
            }
        }
    }

    /// The symbol table (.symtab), if the image has one.
    public static func symbols(_ bytes: [UInt8]) -> [Symbol] {
        withElf(bytes) { elf -> [Symbol] in
            guard let elf else { return [] }
            var result: [Symbol] = []
            var scn: OpaquePointer? = elf_nextscn(elf, nil)
            while let s = scn {
                var sh = GElf_Shdr()
                if gelf_getshdr(s, &sh) != nil, sh.sh_type == UInt32(SHT_SYMTAB), sh.sh_entsize > 0,
                   let data = elf_getdata(s, nil) {
                    let n = Int(sh.sh_size / sh.sh_entsize)
                    for i in 0..<n {
                        var sym = GElf_Sym()
                        guard gelf_getsym(data, Int32(i), &sym) != nil,
                              let namePtr = elf_strptr(elf, Int(sh.sh_link), Int(sym.st_name)) else { continue }
                        let name = String(cString: namePtr)
                        guard !name.isEmpty else { continue }
                        result.append(Symbol(name: name, value: sym.st_value, size: sym.st_size,
                                             isFunction: sym.st_info & 0xF == UInt8(STT_FUNC)))
                    }
                }
                scn = elf_nextscn(elf, s)
            }
            return result
        }
    }
}
