import CKVM
import Memory

/// The CPU state for 32-bit entries (PVH and Linux's 32-bit boot protocol): flat 4 GiB code
/// and data segments, protected mode on, paging off, interrupts off. Both protocols name the
/// same selectors Linux uses, __BOOT_CS (0x10) and __BOOT_DS (0x18); PVH also wants a usable
/// 32-bit TSS.
public enum ProtectedMode {
    /// GDT entries: null, null, 32-bit code, data, 32-bit TSS.
    public static let gdtEntries: [UInt64] = [
        0,
        0,
        0x00CF_9B00_0000_FFFF,  // 0x10: code, present, DPL 0, execute/read, accessed, D=1, G=1
        0x00CF_9300_0000_FFFF,  // 0x18: data, present, DPL 0, read/write, accessed, D/B=1, G=1
        0x0080_8B00_0000_0067,  // 0x20: 32-bit TSS (busy), base 0, limit 0x67
    ]

    /// Replace the long-mode GDT with the 32-bit one (same address, same selectors).
    public static func writeGDT(into memory: GuestMemory) throws(GuestMemoryError) {
        for (i, entry) in gdtEntries.enumerated() {
            try memory.store(entry, at: BootLayout.gdt + UInt64(i * 8))
        }
    }

    public static func sregs(from reset: kvm_sregs) -> kvm_sregs {
        var s = reset
        LongMode.flatSegments(into: &s, longMode: false, gdtEntries: gdtEntries.count, tssLimit: 0x67)
        s.cr0 = 0x11                 // PE | ET
        s.cr3 = 0
        s.cr4 = 0
        s.efer = 0
        return s
    }

    /// PVH: EBX = hvm_start_info. Linux 32-bit: ESI = boot_params, EBP/EDI/EBX zero.
    public static func regs(entry: UInt64, ebx: UInt64 = 0, esi: UInt64 = 0) -> kvm_regs {
        var r = kvm_regs()
        r.rip = entry
        r.rbx = ebx
        r.rsi = esi
        r.rsp = BootLayout.stackPointer
        r.rflags = 0x2
        return r
    }
}
