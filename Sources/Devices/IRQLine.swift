import KVM

/// One interrupt line into the in-kernel PIC/IOAPIC, for a device that raises it.
/// The device tracks its level and calls `set` only on changes: the PIC and IOAPIC see ISA
/// interrupts as edges, so a line must really go down before it can go up again.
public struct IRQLine: Sendable {
    public let vm: VirtualMachine
    public let gsi: UInt32

    public init(vm: VirtualMachine, gsi: UInt32) {
        self.vm = vm
        self.gsi = gsi
    }

    @inline(__always)
    public func set(_ level: Bool) { vm.setIRQLine(gsi, level: level) }
}
