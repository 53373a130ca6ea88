import CKVM

/// The CPUID a vCPU shows its guest: what KVM supports on this host, with the identity of
/// this vCPU filled in and the hypervisor bit set.
public enum CPUID {
    /// Leaf 1 ECX: CMPXCHG16B.
    public static let cx16: UInt32 = 1 << 13
    /// Leaf 0x40000001 EAX: the KVM paravirtual features whose use ends in `vmcall`
    /// (PV_UNHALT 7, PV_SEND_IPI 11, PV_SCHED_YIELD 13, HC_MAP_GPA_RANGE 16).
    public static let kvmVmcallFeatures: UInt32 = 1 << 7 | 1 << 11 | 1 << 13 | 1 << 16
    public static let kvmFeaturesLeaf: UInt32 = 0x4000_0001

    /// `pvmHost`: hide what a PVM host's instruction emulator cannot run for a guest kernel
    /// (CMPXCHG16B) and the KVM features that lead to `vmcall`, which never returns there.
    /// These are the only CPUID bits a PVM host lets a VMM clear; see docs/boot.md.
    public static func entries(supported: [kvm_cpuid_entry2], vcpuID: Int, vcpuCount: Int,
                               pvmHost: Bool = false) -> [kvm_cpuid_entry2] {
        supported.map { entry in
            var e = entry
            switch e.function {
            case 1:
                // EBX[31:24] initial APIC ID, [23:16] logical processors per package.
                e.ebx = (e.ebx & 0x0000_FFFF) | UInt32(vcpuID) << 24 | UInt32(max(vcpuCount, 1)) << 16
                e.ecx |= 1 << 31                 // running under a hypervisor
                if vcpuCount > 1 { e.edx |= 1 << 28 } // HTT: more than one logical processor
                if pvmHost { e.ecx &= ~cx16 }
            case 0xB, 0x1F:
                e.edx = UInt32(vcpuID)           // x2APIC ID
            case kvmFeaturesLeaf:
                if pvmHost { e.eax &= ~kvmVmcallFeatures }
            default:
                break
            }
            return e
        }
    }
}
