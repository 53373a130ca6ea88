// X86Platform: the PC a kernel wakes up in, as firmware would have left it. The guest-physical
// address map (BootLayout: every address swiftvmm gives meaning to), the memory map (E820),
// the tables a kernel reads to find its CPUs, interrupt controllers and PCI bus (MPTable,
// ACPI with its AML), and the CPU itself: CPUID, the MSRs it starts with, and the long-mode
// and protected-mode states the boot protocols enter a kernel in. Nothing here knows what
// kernel is loaded: the kernel loaders (KernelLoading) use this layout, and the machine puts
// the boot CPU in the state that the loaded kernel's entry asks for.

import Memory

/// The guest-physical address map: where swiftvmm puts things, and what is not RAM.
///
///     0x0000_0000  real-mode IVT and BIOS data area (left zero)
///     0x0000_0500  GDT                         (entry state for the 64-bit boot)
///     0x0000_0520  IDT (empty)
///     0x0000_2000  hypercall page              (read-only slot, see Hypercalls)
///     0x0000_6000  PVH hvm_start_info
///     0x0000_7000  boot_params ("zero page")
///     0x0000_8ff0  initial stack pointer
///     0x0000_9000  PML4, 0xA000 PDPT, 0xB000-0xE000 four page directories:
///                  identity map of the first 4 GiB with 2 MiB pages
///     0x0002_0000  kernel command line
///     0x0009_fc00  top of low RAM; EBDA, MP table, BIOS area up to 1 MiB (reserved)
///     0x000e_0000  ACPI: RSDP, then XSDT, FADT, MADT, DSDT (where Linux scans for "RSD PTR ")
///     0x000f_fff0  the reset vector (F000:FFF0): a stub that pulls the i8042's reset line
///     0x0010_0000  kernel (ELF segments at their physical addresses, bzImage at its preferred
///                  address), then the rest of RAM, up to 3 GiB
///     0xc000_0000  the PCI hole: the PCI devices' BARs, up to the IOAPIC
///     0xfec0_0000  IOAPIC
///     0xfee0_0000  local APICs
///     0xfffb_c000  KVM's identity page table, then its real-mode TSS (Intel)
///   0x1_0000_0000  RAM beyond 3 GiB, if the guest has that much
///
/// The addresses below 1 MiB are the ones Firecracker uses for the same structures, which
/// Linux is known to be happy with; nothing there is visible to a guest except through the
/// pointers it is given. Above 3 GiB it is the PC's: KVM's interrupt controllers sit where
/// every PC has them, and RAM makes way for them and for the PCI devices.
public enum BootLayout {
    public static let gdt: UInt64 = 0x500
    public static let idt: UInt64 = 0x520
    /// The hypercall page (see HypercallPage), in a read-only memory slot.
    public static let hypercallPage: UInt64 = 0x2000
    public static let pvhStartInfo: UInt64 = 0x6000
    public static let zeroPage: UInt64 = 0x7000
    public static let stackPointer: UInt64 = 0x8FF0
    public static let pml4: UInt64 = 0x9000
    public static let pdpt: UInt64 = 0xA000
    public static let pageDirectories: UInt64 = 0xB000
    /// Four page directories of 512 2-MiB entries each.
    public static let identityMappedBytes: UInt64 = 4 << 30
    public static let commandLine: UInt64 = 0x20000
    /// Room reserved for the command line (the kernel's own limit is usually lower).
    public static let commandLineCapacity: Int = 0x10000
    /// End of conventional RAM; the last KiB below 640 KiB is the EBDA (MP table lives there).
    public static let lowRAMEnd: UInt64 = 0x9FC00
    public static let mpTable: UInt64 = 0x9FC00
    /// The ACPI tables: the RSDP first (16-byte aligned, inside the 0xE0000-0xFFFFF range Linux
    /// scans when it is given no pointer), the other tables after it, all below `acpiEnd`.
    public static let acpiRSDP: UInt64 = 0xE0000
    public static let acpiEnd: UInt64 = 0xFFFF0
    /// Where a CPU starts after a reset, in real mode at F000:FFF0, and where Linux jumps to
    /// reboot through "the BIOS" (its choice on a hardware-reduced ACPI machine without EFI,
    /// after an EFI reset that does nothing). There is no BIOS; the stub there ends the run
    /// as a reboot, as the firmware's reset would.
    public static let resetVector: UInt64 = 0xFFFF0
    /// mov al, 0xFE; out 0x64, al (the i8042's "pulse reset"); then hlt forever.
    public static let resetVectorStub: [UInt8] = [0xB0, 0xFE, 0xE6, 0x64, 0xF4, 0xEB, 0xFD]
    /// Kernel segments and everything the guest may own start here.
    public static let kernelStart: UInt64 = 0x100000

    /// The PCI hole: from 3 GiB, where guest RAM stops below 4 GiB (GuestMemory splits RAM
    /// there and puts the rest above 4 GiB, so the start is Memory's), up to the IOAPIC. The
    /// PCI bus places BARs in it; the ACPI DSDT gives it to the root bridge as its 32-bit
    /// memory window.
    public static let pciHole: Range<UInt64> = GuestMemory.lowMemoryLimit ..< ioAPIC
    /// KVM's in-kernel IOAPIC and the local APICs, at the addresses every PC has them.
    public static let ioAPIC: UInt64 = 0xFEC0_0000
    public static let localAPIC: UInt64 = 0xFEE0_0000

    /// KVM on Intel needs three pages for a real-mode TSS and one for an identity page table,
    /// in guest-physical space that is not RAM: just below the BIOS ROM area at 4 GiB.
    public static let tssAddress: UInt64 = 0xFFFB_D000
    public static let identityMapAddress: UInt64 = 0xFFFB_C000
}
