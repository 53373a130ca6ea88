import X86Platform

/// Xen's `struct hvm_start_info` (version 1), which a PVH kernel finds in %ebx: the command
/// line, the memory map and the modules (the initrd) as guest-physical pointers. Written as
/// one block: the info, then the module list, then the memory map.
///
///     +0   u32 magic 0x336ec578   +4  u32 version   +8 u32 flags   +12 u32 nr_modules
///     +16  u64 modlist_paddr      +24 u64 cmdline_paddr            +32 u64 rsdp_paddr
///     +40  u64 memmap_paddr       +48 u32 memmap_entries           +52 u32 reserved
///     module: u64 paddr, u64 size, u64 cmdline_paddr, u64 reserved          (32 bytes)
///     memmap: u64 addr, u64 size, u32 type, u32 reserved                    (24 bytes)
public struct PVHStartInfo {
    public static let magic: UInt32 = 0x336E_C578
    public static let version: UInt32 = 1
    public static let headerSize = 56
    public static let moduleListOffset = 0x40
    public static let memoryMapOffset = 0x60
    /// The block fills at most the page it starts on.
    public static let maxMemoryMapEntries = (0x1000 - memoryMapOffset) / 24

    public var bytes: [UInt8]

    /// `rsdp`: the ACPI RSDP's address, if the machine has ACPI tables (0: the kernel scans).
    public static func build(at address: UInt64, commandLine: UInt64, e820: [E820Entry], initrd: Range<UInt64>?,
                             rsdp: UInt64? = nil) -> PVHStartInfo {
        var b = Bytes(count: memoryMapOffset + min(e820.count, maxMemoryMapEntries) * 24)
        b.set(magic, at: 0)
        b.set(version, at: 4)
        if let initrd {
            b.set(UInt32(1), at: 12)
            b.set(address + UInt64(moduleListOffset), at: 16)
            b.set(initrd.lowerBound, at: moduleListOffset)
            b.set(UInt64(initrd.count), at: moduleListOffset + 8)
        }
        b.set(commandLine, at: 24)
        b.set(rsdp ?? 0, at: 32)
        b.set(address + UInt64(memoryMapOffset), at: 40)
        b.set(UInt32(min(e820.count, maxMemoryMapEntries)), at: 48)
        for (i, e) in e820.prefix(maxMemoryMapEntries).enumerated() {
            let at = memoryMapOffset + i * 24
            b.set(e.address, at: at)
            b.set(e.size, at: at + 8)
            b.set(e.type.rawValue, at: at + 16)
        }
        return PVHStartInfo(bytes: b.bytes)
    }
}
