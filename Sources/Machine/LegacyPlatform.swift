import CKVM
import Devices
import KVM
import KernelLoading
import Memory
import RunControl
import X86Platform

/// The PC bits around the CPU that a Linux kernel touches at boot, and the entry state of
/// the bootstrap processor for each boot path.
enum LegacyPlatform {
    /// i8042 (reset line), the POST port 0x80, the CMOS clock and the ACPI sleep registers
    /// (power-off). Everything else on the legacy ISA ports stays unclaimed and reads as
    /// absent (all ones).
    static func register(on ports: IOBus, stop: StopController) throws(BusError) {
        try ports.register(I8042(stop: stop), at: I8042.dataPort, length: I8042.portCount)
        try ports.register(ACPISleepControl(stop: stop), at: ACPISleepControl.port, length: ACPISleepControl.portCount)
        try ports.register(PostCodePort(), at: PostCodePort.port, length: 1)
        try ports.register(CMOS(), at: CMOS.port, length: CMOS.portCount)
    }

    /// The MP table, so a kernel without ACPI finds every vCPU and the IOAPIC.
    static func writeMPTable(into memory: GuestMemory, cpus: Int, supportedCPUID: [kvm_cpuid_entry2]) throws(GuestMemoryError) {
        let leaf1 = supportedCPUID.first { $0.function == 1 }
        let table = MPTable(cpus: cpus, cpuSignature: leaf1?.eax ?? 0x600, featureFlags: leaf1?.edx ?? 0x201)
        try memory.write(table.bytes, at: table.address)
    }

    /// The ACPI tables (RSDP at BootLayout.acpiRSDP), so a kernel with ACPI finds the same:
    /// written once the PCI devices have their slots, which the DSDT's _PRT names.
    static func writeACPITables(into memory: GuestMemory, cpus: Int,
                                pciInterrupts: [ACPITables.PCIInterrupt]) throws(GuestMemoryError) {
        let tables = ACPITables(cpus: cpus, ioAPICID: MPTable.ioAPICID(cpus: cpus),
                                pciInterrupts: pciInterrupts, pciWindow: BootLayout.pciHole,
                                sleepControlPort: UInt16(ACPISleepControl.port))
        precondition(tables.end <= BootLayout.acpiEnd, "ACPI tables for \(cpus) vCPUs end at \(tables.end), past the BIOS area")
        try tables.write(into: memory)
        try memory.write(BootLayout.resetVectorStub, at: BootLayout.resetVector)
    }

    /// Registers of the bootstrap processor for the entry the loader chose.
    static func setEntryState(_ vcpu: VCPU, _ entry: EntryMode, memory: GuestMemory) throws {
        switch entry {
        case .longMode64(let rip, let bootParams):
            try vcpu.setSregs(LongMode.sregs(from: vcpu.sregs()))
            try vcpu.setRegs(LongMode.regs(entry: rip, bootParams: bootParams))
        case .pvh(let eip, let startInfo):
            try ProtectedMode.writeGDT(into: memory)
            try vcpu.setSregs(ProtectedMode.sregs(from: vcpu.sregs()))
            try vcpu.setRegs(ProtectedMode.regs(entry: eip, ebx: startInfo))
        case .protected32(let eip, let bootParams):
            try ProtectedMode.writeGDT(into: memory)
            try vcpu.setSregs(ProtectedMode.sregs(from: vcpu.sregs()))
            try vcpu.setRegs(ProtectedMode.regs(entry: eip, esi: bootParams))
        }
        try vcpu.setFPU(LongMode.fpu())
    }
}
