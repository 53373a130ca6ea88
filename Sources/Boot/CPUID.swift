import CKVM

/// The CPUID a vCPU shows its guest: what KVM supports on this host, with the identity of
/// this vCPU filled in and the hypervisor bit set.
public enum CPUID {
    public static func entries(supported: [kvm_cpuid_entry2], vcpuID: Int, vcpuCount: Int) -> [kvm_cpuid_entry2] {
        supported.map { entry in
            var e = entry
            switch e.function {
            case 1:
                // EBX[31:24] initial APIC ID, [23:16] logical processors per package.
                e.ebx = (e.ebx & 0x0000_FFFF) | UInt32(vcpuID) << 24 | UInt32(max(vcpuCount, 1)) << 16
                e.ecx |= 1 << 31                 // running under a hypervisor
                if vcpuCount > 1 { e.edx |= 1 << 28 } // HTT: more than one logical processor
            case 0xB, 0x1F:
                e.edx = UInt32(vcpuID)           // x2APIC ID
            default:
                break
            }
            return e
        }
    }
}
