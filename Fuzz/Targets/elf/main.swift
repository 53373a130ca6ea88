// ELF kernels as files: any bytes through `inspect` (libelf's parse, the PVH note walk, the
// version banner, the page-offset vote) and the loader (segment checks, placement through the
// page offset, entry choice, initrd, boot data) into a 4 MiB guest, plus the symbol table
// reader crash reports use. Checked: what a successful load reports lies inside guest RAM,
// above the boot area, without overlaps (KernelImageFuzz.check).

import CrashReports
import FuzzSupport
import KernelLoading

@main enum Target { static func main() { runLibFuzzer(fuzz) } }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = size > 0 ? Array(UnsafeBufferPointer(start: data, count: size)) : []
    // The choice of entry, initrd and options rides on the length, so the image is the input.
    KernelImageFuzz.run(bytes, choice: UInt8(truncatingIfNeeded: size))
    if let image = try? ELFImage(bytes: bytes, path: "fuzz") {
        for s in image.segments {
            fuzzCheck(s.fileOffset + s.fileSize <= UInt64(bytes.count), "segment file range past the end")
            fuzzCheck(s.fileSize <= s.memorySize && s.memorySize > 0, "segment sizes \(s.fileSize)/\(s.memorySize)")
        }
        _ = Symbolizer(elf: bytes).describe(image.entry)
    }
    return 0
}
