/// Model-specific registers every vCPU starts with, as firmware leaves them: fast string
/// operations enabled in IA32_MISC_ENABLE (Linux reads it to decide whether `rep movs` is
/// fast), and the SYSCALL/SYSENTER registers explicitly zero, so a kernel never inherits
/// anything from KVM's defaults before it sets its own.
public enum BootMSRs {
    public static let miscEnable: UInt32 = 0x1A0
    public static let fastStrings: UInt64 = 1 << 0

    public static let entries: [(UInt32, UInt64)] = [
        (0x174, 0),               // IA32_SYSENTER_CS
        (0x175, 0),               // IA32_SYSENTER_ESP
        (0x176, 0),               // IA32_SYSENTER_EIP
        (0xC000_0081, 0),         // STAR
        (0xC000_0082, 0),         // LSTAR
        (0xC000_0083, 0),         // CSTAR
        (0xC000_0084, 0),         // SYSCALL_MASK
        (0xC000_0102, 0),         // KERNEL_GS_BASE
        (miscEnable, fastStrings),
    ]
}
