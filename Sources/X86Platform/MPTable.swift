/// The Intel MultiProcessor Specification 1.4 tables, how a kernel without ACPI learns how
/// many CPUs there are, where the IOAPIC is and how ISA interrupts reach it. Linux looks for
/// the floating pointer ("_MP_") in the last KiB of base memory, among other places; swiftvmm
/// puts it at 0x9FC00 with the configuration table ("PCMP") right after it, inside the EBDA
/// area the e820 map reserves.
///
/// Contents: one processor entry per vCPU (LAPIC ID = vCPU index, vCPU 0 the bootstrap
/// processor), one ISA bus, the IOAPIC at 0xFEC00000, ISA IRQs 0-15 routed to IOAPIC pins
/// 0-15 (KVM's in-kernel routing: GSI n is IOAPIC pin n, the PIT on GSI 0), and the local
/// interrupt lines every LAPIC has: LINT0 ExtINT (the 8259), LINT1 NMI.
public struct MPTable {
    public static let localAPICAddress = UInt32(BootLayout.localAPIC)
    public static let ioAPICAddress = UInt32(BootLayout.ioAPIC)
    public static let floatingPointerSize = 16
    public static let headerSize = 44
    public static let isaIRQs = 16

    public let address: UInt64
    public let bytes: [UInt8]

    public var configurationTableAddress: UInt64 { address + UInt64(Self.floatingPointerSize) }
    public var ioAPICID: UInt8

    /// The IOAPIC's ID: the first after the processors' (the ACPI MADT uses the same).
    public static func ioAPICID(cpus: Int) -> UInt8 { UInt8(truncatingIfNeeded: cpus) }

    /// `cpuSignature` and `featureFlags` are CPUID leaf 1's EAX and EDX, as the spec asks.
    public init(cpus: Int, at address: UInt64 = BootLayout.mpTable, cpuSignature: UInt32 = 0x600, featureFlags: UInt32 = 0x201) {
        self.address = address
        let ioapicID = Self.ioAPICID(cpus: cpus)
        self.ioAPICID = ioapicID
        var entries: [UInt8] = []
        var count = 0
        func append(_ b: Bytes) { entries += b.bytes; count += 1 }
        for cpu in 0..<cpus {
            var p = Bytes(count: 20)
            p.set(UInt8(0), at: 0)                          // processor
            p.set(UInt8(truncatingIfNeeded: cpu), at: 1)    // local APIC ID
            p.set(UInt8(0x14), at: 2)                       // local APIC version
            p.set(UInt8(cpu == 0 ? 0x3 : 0x1), at: 3)       // enabled; bootstrap processor
            p.set(cpuSignature, at: 4)
            p.set(featureFlags, at: 8)
            append(p)
        }
        var bus = Bytes(count: 8)
        bus.set(UInt8(1), at: 0)                            // bus 0: ISA
        bus.put("ISA   ", at: 2)
        append(bus)
        var ioapic = Bytes(count: 8)
        ioapic.set(UInt8(2), at: 0)
        ioapic.set(ioapicID, at: 1)
        ioapic.set(UInt8(0x11), at: 2)                      // version
        ioapic.set(UInt8(1), at: 3)                         // enabled
        ioapic.set(Self.ioAPICAddress, at: 4)
        append(ioapic)
        for irq in 0..<Self.isaIRQs {
            var e = Bytes(count: 8)
            e.set(UInt8(3), at: 0)                          // I/O interrupt assignment
            e.set(UInt8(0), at: 1)                          // INT (vectored)
            e.set(UInt16(0), at: 2)                         // polarity/trigger: conform to the bus (ISA: high, edge)
            e.set(UInt8(0), at: 4)                          // source bus: ISA
            e.set(UInt8(irq), at: 5)
            e.set(ioapicID, at: 6)
            e.set(UInt8(irq), at: 7)                        // IOAPIC pin
            append(e)
        }
        for (type, lint) in [(UInt8(3), UInt8(0)), (UInt8(1), UInt8(1))] {  // ExtINT on LINT0, NMI on LINT1
            var e = Bytes(count: 8)
            e.set(UInt8(4), at: 0)                          // local interrupt assignment
            e.set(type, at: 1)
            e.set(UInt8(0xFF), at: 6)                       // every local APIC
            e.set(lint, at: 7)
            append(e)
        }

        var header = Bytes(count: Self.headerSize)
        header.put("PCMP", at: 0)
        header.set(UInt16(Self.headerSize + entries.count), at: 4)
        header.set(UInt8(4), at: 6)                         // spec revision 1.4
        header.put("SWIFTVMM", at: 8)
        header.put("KVM GUEST   ", at: 16)
        header.set(UInt16(count), at: 34)
        header.set(Self.localAPICAddress, at: 36)
        var table = header.bytes + entries
        table[7] = Self.checksum(table)

        var fp = Bytes(count: Self.floatingPointerSize)
        fp.put("_MP_", at: 0)
        fp.set(UInt32(truncatingIfNeeded: address + UInt64(Self.floatingPointerSize)), at: 4)
        fp.set(UInt8(1), at: 8)                             // length in 16-byte units
        fp.set(UInt8(4), at: 9)                             // spec revision 1.4
        var pointer = fp.bytes
        pointer[10] = Self.checksum(pointer)
        bytes = pointer + table
    }

    /// The byte that makes all bytes sum to zero (mod 256), with the checksum field still 0.
    public static func checksum(_ bytes: [UInt8]) -> UInt8 {
        UInt8(truncatingIfNeeded: 0 &- bytes.reduce(UInt8(0), &+))
    }
}
