import CKVM
import Memory

/// The CPU state for entering a 64-bit kernel directly in long mode, as Linux's 64-bit boot
/// protocol specifies it: paging on with an identity map, a GDT with flat __BOOT_CS (0x10)
/// and __BOOT_DS (0x18), interrupts off. The bundled guest's 64-bit entry expects the same.
public enum LongMode {
    public static let codeSelector: UInt16 = 0x10
    public static let dataSelector: UInt16 = 0x18
    public static let tssSelector: UInt16 = 0x20

    /// GDT entries: null, null, 64-bit code, data, TSS (VT-x insists on a usable TR).
    public static let gdtEntries: [UInt64] = [
        0,
        0,
        0x00AF_9B00_0000_FFFF,  // 0x10: code, present, DPL 0, execute/read, accessed, L=1, G=1
        0x00CF_9300_0000_FFFF,  // 0x18: data, present, DPL 0, read/write, accessed, D/B=1, G=1
        0x0080_8B00_0000_FFFF,  // 0x20: 64-bit TSS (busy), base 0
    ]

    /// Write the GDT, an empty IDT and the identity-mapping page tables.
    public static func writeTables(into memory: GuestMemory) throws(GuestMemoryError) {
        for (i, entry) in gdtEntries.enumerated() {
            try memory.store(entry, at: BootLayout.gdt + UInt64(i * 8))
        }
        try memory.store(UInt64(0), at: BootLayout.idt)
        // PML4[0] -> PDPT; PDPT[0..3] -> four page directories; each PD entry maps 2 MiB.
        let present: UInt64 = 0x1, writable: UInt64 = 0x2, large: UInt64 = 0x80
        try memory.store(BootLayout.pdpt | present | writable, at: BootLayout.pml4)
        for i in 0..<UInt64(4) {
            let pd = BootLayout.pageDirectories + i * 0x1000
            try memory.store(pd | present | writable, at: BootLayout.pdpt + i * 8)
            for j in 0..<UInt64(512) {
                let physical = (i * 512 + j) << 21
                try memory.store(physical | present | writable | large, at: pd + j * 8)
            }
        }
    }

    /// Special registers for long mode, starting from the vCPU's reset state.
    public static func sregs(from reset: kvm_sregs) -> kvm_sregs {
        var s = reset
        flatSegments(into: &s, longMode: true, gdtEntries: gdtEntries.count, tssLimit: 0xFFFF)
        s.cr0 = 0x8005_0033          // PG | WP | NE | ET | MP | PE
        s.cr3 = BootLayout.pml4
        s.cr4 = 0x20                 // PAE
        s.efer = 0x500               // LME | LMA
        return s
    }

    /// The segment state both entry modes share: flat 4 GiB code at __BOOT_CS (64-bit or
    /// 32-bit), data at __BOOT_DS in every data register, a busy TSS (VT-x wants a usable TR),
    /// the GDT at its address, and an empty IDT (the kernel installs its own).
    static func flatSegments(into s: inout kvm_sregs, longMode: Bool, gdtEntries count: Int, tssLimit: UInt32) {
        var code = kvm_segment()
        code.base = 0
        code.limit = 0xFFFF_FFFF
        code.selector = codeSelector
        code.type = 0xB              // execute/read, accessed
        code.present = 1
        code.dpl = 0
        code.db = longMode ? 0 : 1
        code.s = 1
        code.l = longMode ? 1 : 0
        code.g = 1
        var data = code
        data.selector = dataSelector
        data.type = 0x3              // read/write, accessed
        data.db = 1
        data.l = 0
        var tss = kvm_segment()
        tss.selector = tssSelector
        tss.limit = tssLimit
        tss.type = 0xB               // busy TSS
        tss.present = 1
        s.cs = code
        s.ds = data; s.es = data; s.fs = data; s.gs = data; s.ss = data
        s.tr = tss
        s.gdt.base = BootLayout.gdt
        s.gdt.limit = UInt16(count * 8 - 1)
        s.idt.base = BootLayout.idt
        s.idt.limit = 0
    }

    /// General registers: RIP at the entry, RSI pointing at boot_params, interrupts off.
    public static func regs(entry: UInt64, bootParams: UInt64) -> kvm_regs {
        var r = kvm_regs()
        r.rip = entry
        r.rsi = bootParams
        r.rsp = BootLayout.stackPointer
        r.rbp = BootLayout.stackPointer
        r.rflags = 0x2               // bit 1 is always set; IF clear
        return r
    }

    /// x87 control word and MXCSR at their power-on defaults.
    public static func fpu() -> kvm_fpu {
        var f = kvm_fpu()
        f.fcw = 0x37F
        f.mxcsr = 0x1F80
        return f
    }
}
