import HostSupport
import KernelLoading
import Testing

/// A little-endian ELF64 x86-64 executable whose program headers are given as raw fields
/// (type, flags, vaddr, paddr, filesz, memsz), all pointing at the same few bytes after the
/// headers: what a fuzzer's mutated kernel file looks like to libelf.
func rawELF64(entry: UInt64, segments: [(type: UInt32, flags: UInt32, vaddr: UInt64, paddr: UInt64, filesz: UInt64, memsz: UInt64)]) -> [UInt8] {
    var out: [UInt8] = []
    func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
    let contents = UInt64(64 + 56 * segments.count)
    out += [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1, 0] + [UInt8](repeating: 0, count: 8)
    put(UInt16(2)); put(UInt16(62)); put(UInt32(1)); put(entry); put(UInt64(64)); put(UInt64(0)); put(UInt32(0))
    put(UInt16(64)); put(UInt16(56)); put(UInt16(segments.count)); put(UInt16(64)); put(UInt16(0)); put(UInt16(0))
    for s in segments {
        put(s.type); put(s.flags); put(contents); put(s.vaddr); put(s.paddr); put(s.filesz); put(s.memsz); put(UInt64(0x1000))
    }
    return out + [UInt8](repeating: 0x90, count: 64)
}

/// Defects the fuzz targets in Fuzz/ found (docs/reliability.md lists them with their fixes);
/// each test failed before its fix. The crashing inputs are in the targets' seed corpora.
@Suite("fuzz findings")
struct FuzzFindingsTests {
    @Test("inspect --json of an ELF whose segment claims more than 2^63 bytes reports the size, instead of trapping")
    func inspectHugeSegment() {
        let image = rawELF64(entry: 0x100000, segments: [
            (type: 1, flags: 5, vaddr: 0x100000, paddr: 0x100000, filesz: 16, memsz: 0x8000_0000_0000_0000),
        ])
        let report = KernelInspection.inspect(bytes: image, path: "huge.elf")
        #expect(report.format == "ELF64")
        #expect(report.json.contains("\"memory_size\": 9223372036854775808"))
        #expect(JSON.uint(UInt64.max).serialized() == "18446744073709551615")
    }
}
