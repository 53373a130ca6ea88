import HostSupport
import Memory

/// Where the initial RAM disk goes: page-aligned at the top of low memory, below the highest
/// address the kernel can reach it at (`initrd_addr_max` in the setup header), as boot loaders
/// have always put it. Keeping it high leaves the low RAM free for the kernel to decompress
/// and relocate into.
public enum Initrd {
    /// For kernels without a setup header (ELF): the boot protocol's historical default,
    /// which every kernel accepts.
    public static let defaultAddressMax: UInt64 = 0x37FF_FFFF

    /// The guest-physical range for an initrd of `size` bytes, or a clear error when it does
    /// not fit between the end of the kernel (`above`) and the limit.
    public static func place(size: UInt64, memory: GuestMemory, above kernelEnd: UInt64,
                             maxAddress: UInt64, path: String) throws(BootError) -> Range<UInt64> {
        // The last byte must be at or below maxAddress, and all of it in low RAM.
        let top = min(memory.lowMemoryEnd, maxAddress &+ 1)
        let pageMask: UInt64 = 0xFFF
        guard size > 0, size < top else {
            throw .doesNotFit(path: path, reason: "initrd of \(size) bytes is larger than the \(MemorySize.format(top)) of guest RAM it must fit below")
        }
        let start = (top - size) & ~pageMask
        guard start >= kernelEnd else {
            throw .doesNotFit(path: path, reason: "initrd of \(size) bytes does not fit between the kernel's end at \(Diagnostics.hex(kernelEnd)) and \(Diagnostics.hex(top)); give the guest more memory")
        }
        return start ..< start + size
    }
}
