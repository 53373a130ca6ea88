// bzImages: the setup header's fields (protocol version, setup_sects, loadflags, xloadflags,
// payload offset and length, preferred address, init_size, cmdline_size, initrd_addr_max,
// the kernel version pointer) through `inspect` and the loader into a 4 MiB guest. The input
// is the file with its 'HdrS' magic forced in, so every mutation reaches the header parser.
// Checked as for ELF (KernelImageFuzz.check), and the boot_params the loader wrote carry
// the setup header it was given.

import FuzzSupport
import KernelLoading
import X86Platform

@main enum Target { static func main() { runLibFuzzer(fuzz) } }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var bytes = size > 0 ? Array(UnsafeBufferPointer(start: data, count: size)) : []
    if bytes.count >= 0x206 { bytes.replaceSubrange(0x202 ..< 0x206, with: Array("HdrS".utf8)) }
    KernelImageFuzz.run(bytes, choice: UInt8(truncatingIfNeeded: size))
    if let image = try? BzImage(bytes: bytes, path: "fuzz") {
        fuzzCheck(image.loadAddress >= BootLayout.kernelStart, "load address \(image.loadAddress)")
        // Computing the footprint must not overflow, and it stays below the guest-physical limit.
        let extent = max(UInt64(image.protectedMode.count), UInt64(image.initSize), BzImage.entry64Offset)
        fuzzCheck(image.footprint.upperBound <= max(BzImage.highestLoadAddress, BootLayout.kernelStart + extent),
                  "footprint \(image.footprint)")
        _ = image.payloadCompression
        let zp = image.zeroPage(initrd: nil)
        for (i, b) in image.setupHeader.enumerated() where i != 0x210 - 0x1F1 && i != 0x211 - 0x1F1 && !(0x214 - 0x1F1 ..< 0x218 - 0x1F1).contains(i)
            && !(0x224 - 0x1F1 ..< 0x226 - 0x1F1).contains(i) && i != 0x1FA - 0x1F1 && i != 0x1FB - 0x1F1 {
            fuzzCheck(zp.bytes[ZeroPage.setupHeader + i] == b, "boot_params byte \(0x1F1 + i) differs from the setup header")
        }
    }
    return 0
}
