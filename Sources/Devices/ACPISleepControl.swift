import RunControl

/// The hardware-reduced ACPI sleep registers (FADT SLEEP_CONTROL_REG and SLEEP_STATUS_REG),
/// the one way ACPI gives a guest to power the machine off when there are no PM1 blocks.
/// Linux's `poweroff` writes SLP_TYP (the value of the DSDT's `\_S5`, shifted left by 2) with
/// SLP_EN (bit 5) to the control register; that ends the run as a clean shutdown, exit 0.
/// Without it Linux would only halt and print "reboot: System halted".
///
///   port 0x600  sleep control (write)      port 0x601  sleep status (reads 0: never woken)
public final class ACPISleepControl: BusDevice, @unchecked Sendable {
    public static let port: UInt64 = 0x600
    public static let portCount: UInt64 = 2
    /// The sleep type the DSDT's `\_S5` names; the others (S1-S4) are not offered.
    public static let softOffType: UInt8 = 5
    static let sleepEnable: UInt8 = 0x20
    static let sleepTypeShift: UInt8 = 2, sleepTypeMask: UInt8 = 0x1C

    private let stop: StopController

    public init(stop: StopController) {
        self.stop = stop
        super.init(name: "acpi-sleep")
    }

    public override func read(offset: UInt64, size: Int) -> UInt64 { 0 }

    public override func write(offset: UInt64, size: Int, value: UInt64) {
        let byte = UInt8(truncatingIfNeeded: value)
        guard offset == 0, byte & Self.sleepEnable != 0,
              (byte & Self.sleepTypeMask) >> Self.sleepTypeShift == Self.softOffType else { return }
        stop.stop(.shutdown)
    }
}
