import Memory

/// The ACPI tables swiftvmm gives a guest: how a stock distribution kernel learns about the
/// machine. Debian's cloud kernel, for one, is built without MP-table parsing (the MP table
/// is for kernels without ACPI, like the project's test kernel); without ACPI it finds one
/// CPU and runs every interrupt through the 8259 in virtual-wire mode, which hangs on a real
/// kvm_amd (KVM's PIC asks the vCPU to look for an interrupt only when its output rises).
/// With these tables it uses the IOAPIC and a local APIC per vCPU.
///
///     RSDP  "RSD PTR " at 0xE0000 (Linux also scans 0xE0000-0xFFFFF for it) -> XSDT
///     XSDT  -> FADT, MADT
///     FADT  hardware-reduced ACPI: no PM timer, no SCI, no PM1 registers; a reset register
///           (0xFE to port 0x64, the i8042's reset line) and the sleep control register
///           (port 0x600: power-off); -> DSDT
///     MADT  one local APIC per vCPU, the IOAPIC, IRQ 0 on GSI 0, LINT1 NMI
///     DSDT  AML: the PCI root bridge with its interrupt routing (_PRT), the legacy devices
///           swiftvmm has: COM1, the i8042 (its keyboard port), the CMOS clock; \_S5
///
/// Hardware-reduced means Linux leaves the 8259s alone and sets up no ISA interrupt by
/// itself: a legacy device gets its interrupt only through a DSDT entry, which is why COM1
/// and the others are described there. Power-off goes through the sleep control register
/// (`\_S5` says which sleep type is "soft off").
public struct ACPITables: Sendable {
    /// The INTA# line of a PCI slot and the GSI it raises (MachineDevices assigns them).
    public struct PCIInterrupt: Sendable, Equatable {
        public var slot: Int
        public var gsi: UInt32
        public init(slot: Int, gsi: UInt32) { self.slot = slot; self.gsi = gsi }
    }

    public struct Table: Sendable, Equatable {
        public let address: UInt64
        public let bytes: [UInt8]
    }

    public static let oemID = "SWVMM "
    public static let oemTableID = "SWIFTVMM"
    public static let oemRevision: UInt32 = 1
    public static let creatorID = "SVMM"
    public static let creatorRevision: UInt32 = 1
    public static let headerSize = 36
    public static let rsdpSize = 36
    public static let fadtSize = 276

    public let rsdp, xsdt, fadt, madt, dsdt: Table

    /// All of them, in the order they sit in memory.
    public var all: [Table] { [rsdp, xsdt, fadt, madt, dsdt] }

    /// The tables for `cpus` vCPUs, the IOAPIC with `ioAPICID` (the MP table's), the PCI
    /// devices' INTA# routing, the bus's 32-bit MMIO window and the port of the sleep
    /// registers (control, status). The RSDP at `address`, the rest after it, 16-byte aligned.
    public init(cpus: Int, ioAPICID: UInt8, pciInterrupts: [PCIInterrupt], pciWindow: Range<UInt64>,
                sleepControlPort: UInt16, at address: UInt64 = BootLayout.acpiRSDP) {
        func align(_ a: UInt64) -> UInt64 { (a + 15) & ~15 }
        let xsdtAt = align(address + UInt64(Self.rsdpSize))
        let fadtAt = align(xsdtAt + UInt64(Self.headerSize + 2 * 8))
        let madtBytes = Self.madt(cpus: cpus, ioAPICID: ioAPICID)
        let madtAt = align(fadtAt + UInt64(Self.fadtSize))
        let dsdtAt = align(madtAt + UInt64(madtBytes.count))
        dsdt = Table(address: dsdtAt, bytes: Self.dsdt(pciInterrupts: pciInterrupts, pciWindow: pciWindow))
        madt = Table(address: madtAt, bytes: madtBytes)
        fadt = Table(address: fadtAt, bytes: Self.fadt(dsdt: dsdtAt, sleepControlPort: sleepControlPort))
        xsdt = Table(address: xsdtAt, bytes: Self.xsdt(entries: [fadtAt, madtAt]))
        rsdp = Table(address: address, bytes: Self.rsdp(xsdt: xsdtAt))
    }

    /// Where the last table ends.
    public var end: UInt64 { dsdt.address + UInt64(dsdt.bytes.count) }

    public func write(into memory: GuestMemory) throws(GuestMemoryError) {
        for t in all { try memory.write(t.bytes, at: t.address) }
    }

    // MARK: The tables

    /// RSDP (ACPI 2.0+): signature, checksum of the first 20 bytes, OEM ID, revision 2,
    /// RSDT address (none: 0), length 36, XSDT address, checksum of all 36 bytes.
    public static func rsdp(xsdt: UInt64) -> [UInt8] {
        var b = Bytes(count: rsdpSize)
        b.put("RSD PTR ", at: 0)
        b.put(oemID, at: 9)
        b.set(UInt8(2), at: 15)
        b.set(UInt32(rsdpSize), at: 20)
        b.set(xsdt, at: 24)
        b.bytes[8] = MPTable.checksum(Array(b.bytes[0..<20]))
        b.bytes[32] = MPTable.checksum(b.bytes)
        return b.bytes
    }

    /// XSDT: the header and one 64-bit address per table (the FADT first, by convention).
    public static func xsdt(entries: [UInt64]) -> [UInt8] {
        var b = header("XSDT", length: headerSize + 8 * entries.count, revision: 1)
        for (i, e) in entries.enumerated() { b.set(e, at: headerSize + 8 * i) }
        return finish(b)
    }

    // FADT fields (ACPI 6.5, 5.2.9), offsets from the table's start.
    public static let fadtDSDT = 40, fadtCentury = 108, fadtBootArch = 109, fadtFlags = 112
    public static let fadtResetRegister = 116, fadtResetValue = 128, fadtMinorVersion = 131
    public static let fadtXDSDT = 140, fadtSleepControl = 244, fadtSleepStatus = 256, fadtHypervisorVendor = 268
    /// The SLP_TYP `\_S5` names, which the guest writes back to power off.
    public static let softOffSleepType: UInt64 = 5
    /// Flags: RESET_REG_SUP (bit 10), HW_REDUCED_ACPI (bit 20).
    public static let fadtFlagResetRegister: UInt32 = 1 << 10
    public static let fadtFlagHardwareReduced: UInt32 = 1 << 20
    /// IAPC_BOOT_ARCH: LEGACY_DEVICES (bit 0) and 8042 (bit 1), so Linux keeps the i8042 and
    /// the other ISA devices. Not "MSI not supported" (bit 3): virtio-pci uses MSI-X.
    public static let fadtBootArchLegacy: UInt16 = 1 << 0
    public static let fadtBootArch8042: UInt16 = 1 << 1

    /// FADT revision 6 (276 bytes). Hardware-reduced: the SCI, PM1 and GPE blocks, PM timer
    /// all zero. The reset register is the i8042's command port: writing 0xFE there ends the
    /// run as a reboot (Linux itself reboots a hardware-reduced machine without EFI through
    /// the BIOS reset vector, where swiftvmm's stub does the same write). The sleep control
    /// register powers off. The CMOS century register (0x32) is swiftvmm's CMOS clock's.
    public static func fadt(dsdt: UInt64, sleepControlPort: UInt16) -> [UInt8] {
        var b = header("FACP", length: fadtSize, revision: 6)
        b.set(UInt32(truncatingIfNeeded: dsdt), at: fadtDSDT)
        b.set(UInt8(0x32), at: fadtCentury)
        b.set(fadtBootArchLegacy | fadtBootArch8042, at: fadtBootArch)
        b.set(fadtFlagResetRegister | fadtFlagHardwareReduced, at: fadtFlags)
        // Generic Address Structure: SystemIO, 8 bits at bit 0, byte access, port 0x64.
        b.set(UInt8(1), at: fadtResetRegister)
        b.set(UInt8(8), at: fadtResetRegister + 1)
        b.set(UInt8(0), at: fadtResetRegister + 2)
        b.set(UInt8(1), at: fadtResetRegister + 3)
        b.set(UInt64(0x64), at: fadtResetRegister + 4)
        b.set(UInt8(0xFE), at: fadtResetValue)
        b.set(UInt8(0), at: fadtMinorVersion)
        b.set(dsdt, at: fadtXDSDT)
        // Sleep control and status: SystemIO, 8 bits, byte access, at the port and the next.
        for (offset, port) in [(fadtSleepControl, sleepControlPort), (fadtSleepStatus, sleepControlPort + 1)] {
            b.set(UInt8(1), at: offset)
            b.set(UInt8(8), at: offset + 1)
            b.set(UInt8(0), at: offset + 2)
            b.set(UInt8(1), at: offset + 3)
            b.set(UInt64(port), at: offset + 4)
        }
        b.put("SWIFTVMM", at: fadtHypervisorVendor)
        return finish(b)
    }

    // MADT entry types (ACPI 6.5, 5.2.12).
    public static let madtLocalAPIC: UInt8 = 0, madtIOAPIC: UInt8 = 1, madtSourceOverride: UInt8 = 2
    public static let madtLocalAPICNMI: UInt8 = 4, madtLocalX2APIC: UInt8 = 9, madtLocalX2APICNMI: UInt8 = 10

    /// MADT ("APIC"): the local APIC address, PCAT_COMPAT (KVM's irqchip does have the 8259
    /// pair), then:
    /// - one enabled local APIC per vCPU, processor UID = APIC ID = vCPU index (x2APIC
    ///   entries from index 255 on, which an 8-bit APIC ID cannot name);
    /// - the IOAPIC at 0xFEC00000 with GSIs from 0, with the MP table's ID;
    /// - IRQ 0 -> GSI 0. Linux assumes identity for ISA IRQs anyway, but PC firmware
    ///   (and QEMU, whose PIT is on pin 2) says IRQ 0 -> GSI 2, and an OS may guess that:
    ///   KVM's default routing has the PIT on GSI 0, IOAPIC pin 0, so say so;
    /// - LINT1 NMI on every processor, as firmware does.
    public static func madt(cpus: Int, ioAPICID: UInt8) -> [UInt8] {
        var entries: [UInt8] = []
        var x2apic = false
        for cpu in 0..<cpus {
            if cpu < 0xFF {
                var e = Bytes(count: 8)
                e.set(madtLocalAPIC, at: 0)
                e.set(UInt8(8), at: 1)
                e.set(UInt8(cpu), at: 2)                    // ACPI processor UID
                e.set(UInt8(cpu), at: 3)                    // APIC ID
                e.set(UInt32(1), at: 4)                     // enabled
                entries += e.bytes
            } else {
                x2apic = true
                var e = Bytes(count: 16)
                e.set(madtLocalX2APIC, at: 0)
                e.set(UInt8(16), at: 1)
                e.set(UInt32(cpu), at: 4)                   // x2APIC ID
                e.set(UInt32(1), at: 8)                     // enabled
                e.set(UInt32(cpu), at: 12)                  // ACPI processor UID
                entries += e.bytes
            }
        }
        var io = Bytes(count: 12)
        io.set(madtIOAPIC, at: 0)
        io.set(UInt8(12), at: 1)
        io.set(ioAPICID, at: 2)
        io.set(MPTable.ioAPICAddress, at: 4)
        io.set(UInt32(0), at: 8)                            // GSI base
        entries += io.bytes
        var iso = Bytes(count: 10)
        iso.set(madtSourceOverride, at: 0)
        iso.set(UInt8(10), at: 1)
        iso.set(UInt8(0), at: 2)                            // bus: ISA
        iso.set(UInt8(0), at: 3)                            // IRQ 0 (the PIT)
        iso.set(UInt32(0), at: 4)                           // GSI 0
        iso.set(UInt16(0), at: 8)                           // conforms to the bus: edge, active high
        entries += iso.bytes
        var nmi = Bytes(count: 6)
        nmi.set(madtLocalAPICNMI, at: 0)
        nmi.set(UInt8(6), at: 1)
        nmi.set(UInt8(0xFF), at: 2)                         // all processors
        nmi.set(UInt16(0), at: 3)                           // conforms
        nmi.set(UInt8(1), at: 5)                            // LINT1
        entries += nmi.bytes
        if x2apic {
            var e = Bytes(count: 12)
            e.set(madtLocalX2APICNMI, at: 0)
            e.set(UInt8(12), at: 1)
            e.set(UInt32(0xFFFF_FFFF), at: 4)               // all processors
            e.set(UInt8(1), at: 8)                          // LINT1
            entries += e.bytes
        }
        var b = header("APIC", length: headerSize + 8 + entries.count, revision: 4)
        b.set(MPTable.localAPICAddress, at: headerSize)
        b.set(UInt32(1), at: headerSize + 4)                // PCAT_COMPAT
        b.bytes.replaceSubrange((headerSize + 8)..., with: entries)
        return finish(b)
    }

    /// DSDT: a header and this AML.
    ///
    ///     Scope (\_SB) {
    ///         Device (PCI0) {                       the root bridge: without it Linux with
    ///             Name (_HID, EisaId ("PNP0A03"))   ACPI scans no PCI bus at all
    ///             Name (_UID, 0)  Name (_SEG, 0)  Name (_BBN, 0)
    ///             Name (_CRS, ResourceTemplate () { buses 0-255, I/O 0-0xCF7 and
    ///                 0xD00-0xFFFF (not the config ports), the 32-bit MMIO window })
    ///             Name (_PRT, Package () { Package () { slot << 16 | 0xFFFF, 0 (INTA#), 0, GSI }, ... })
    ///         }
    ///         Device (COM1) { _HID PNP0501, I/O 0x3F8-0x3FF, IRQ 4 }
    ///         Device (PS2K) { _HID PNP0303, I/O 0x60 and 0x64, IRQ 1 }   the i8042's keyboard
    ///                                      port only: no PS2M, so Linux probes no aux port (a
    ///                                      mouse swiftvmm does not have; the probe would poll
    ///                                      out a 10000-read timeout)
    ///         Device (RTC)  { _HID PNP0B00, I/O 0x70-0x71, IRQ 8 }
    ///     }
    ///     Name (\_S5, Package () { 5, 5 })         "soft off" is sleep type 5
    ///
    /// A _PRT entry whose source is 0 names the GSI directly (no link device); Linux then
    /// programs the IOAPIC pin level-triggered, as an INTx line is. The GSIs are the ones
    /// the devices' interrupt line registers hold.
    public static func dsdt(pciInterrupts: [PCIInterrupt], pciWindow window: Range<UInt64>) -> [UInt8] {
        typealias R = AML.Resource
        let routes = pciInterrupts.map { r in
            AML.package([AML.integer(UInt64(r.slot) << 16 | 0xFFFF), AML.integer(0), AML.integer(0),
                         AML.integer(UInt64(r.gsi))])
        }
        let pci = AML.device("PCI0", [
            AML.name("_HID", AML.eisaID("PNP0A03")),
            AML.name("_UID", AML.integer(0)),
            AML.name("_SEG", AML.integer(0)),
            AML.name("_BBN", AML.integer(0)),
            AML.name("_CRS", AML.resourceTemplate([
                R.busNumbers(0...0xFF),
                R.ioWindow(0...0xCF7),
                R.ioWindow(0xD00...0xFFFF),
                R.memoryWindow(UInt32(window.lowerBound)...UInt32(window.upperBound - 1)),
            ])),
            AML.name("_PRT", AML.package(routes)),
        ])
        func isa(_ name: String, _ hid: String, _ resources: [[UInt8]]) -> [UInt8] {
            AML.device(name, [AML.name("_HID", AML.eisaID(hid)), AML.name("_CRS", AML.resourceTemplate(resources))])
        }
        let sb = AML.scope("\\_SB", [
            pci,
            isa("COM1", "PNP0501", [R.io(0x3F8, length: 8), R.irq(4)]),
            isa("PS2K", "PNP0303", [R.io(0x60, length: 1), R.io(0x64, length: 1), R.irq(1)]),
            isa("RTC", "PNP0B00", [R.io(0x70, length: 2), R.irq(8)]),
        ])
        // \_S5: the sleep type to write to the sleep control register for "soft off".
        let s5 = AML.name("\\_S5", AML.package([AML.integer(softOffSleepType), AML.integer(softOffSleepType)]))
        let aml = sb + s5
        var b = header("DSDT", length: headerSize + aml.count, revision: 2)
        b.bytes.replaceSubrange(headerSize..., with: aml)
        return finish(b)
    }

    // MARK: Helpers

    /// The 36-byte header every table but the RSDP starts with; the checksum comes last.
    static func header(_ signature: String, length: Int, revision: UInt8) -> Bytes {
        var b = Bytes(count: length)
        b.put(signature, at: 0)
        b.set(UInt32(length), at: 4)
        b.set(revision, at: 8)
        b.put(oemID, at: 10)
        b.put(oemTableID, at: 16)
        b.set(oemRevision, at: 24)
        b.put(creatorID, at: 28)
        b.set(creatorRevision, at: 32)
        return b
    }

    static func finish(_ table: Bytes) -> [UInt8] {
        var b = table.bytes
        b[9] = MPTable.checksum(b)
        return b
    }
}
