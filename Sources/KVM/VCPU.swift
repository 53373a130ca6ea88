import CKVM
import Glibc

/// One virtual CPU: its fd, its shared `kvm_run` page, and register access.
/// The run loop itself lives in the Machine layer; this type only wraps the ioctls.
/// Unchecked Sendable: an fd and the kvm_run mapping, used by its own vCPU thread (and read
/// by reports only once that thread has left KVM_RUN).
public final class VCPU: @unchecked Sendable {
    /// Held strongly: a vCPU must not outlive the VM it belongs to.
    public let vm: VirtualMachine
    public let id: Int
    public let fd: Int32
    public let run: UnsafeMutablePointer<kvm_run>
    let runSize: Int

    init(vm: VirtualMachine, id: Int, fd: Int32, run: UnsafeMutablePointer<kvm_run>, runSize: Int) {
        self.vm = vm
        self.id = id
        self.fd = fd
        self.run = run
        self.runSize = runSize
    }

    deinit {
        munmap(run, runSize)
        close(fd)
    }

    public func regs() throws(KVMError) -> kvm_regs {
        var r = kvm_regs()
        guard skvm_ioctl_ptr(fd, SKVM_GET_REGS, &r) == 0 else { throw .ioctl("KVM_GET_REGS", errno: errno) }
        return r
    }

    public func setRegs(_ regs: kvm_regs) throws(KVMError) {
        var r = regs
        guard skvm_ioctl_ptr(fd, SKVM_SET_REGS, &r) == 0 else { throw .ioctl("KVM_SET_REGS", errno: errno) }
    }

    public func sregs() throws(KVMError) -> kvm_sregs {
        var s = kvm_sregs()
        guard skvm_ioctl_ptr(fd, SKVM_GET_SREGS, &s) == 0 else { throw .ioctl("KVM_GET_SREGS", errno: errno) }
        return s
    }

    public func setSregs(_ sregs: kvm_sregs) throws(KVMError) {
        var s = sregs
        guard skvm_ioctl_ptr(fd, SKVM_SET_SREGS, &s) == 0 else { throw .ioctl("KVM_SET_SREGS", errno: errno) }
    }

    public func setFPU(_ fpu: kvm_fpu) throws(KVMError) {
        var f = fpu
        guard skvm_ioctl_ptr(fd, SKVM_SET_FPU, &f) == 0 else { throw .ioctl("KVM_SET_FPU", errno: errno) }
    }

    public func setCPUID(_ entries: [kvm_cpuid_entry2]) throws(KVMError) {
        let bytes = Int(skvm_cpuid2_size(UInt32(entries.count)))
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
        defer { raw.deallocate() }
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        let cpuid = raw.assumingMemoryBound(to: kvm_cpuid2.self)
        cpuid.pointee.nent = UInt32(entries.count)
        let dst = skvm_cpuid2_entries(cpuid)!
        for (i, e) in entries.enumerated() { dst[i] = e }
        guard skvm_ioctl_ptr(fd, SKVM_SET_CPUID2, raw) == 0 else { throw .ioctl("KVM_SET_CPUID2", errno: errno) }
    }

    /// KVM_SET_MSRS for (index, value) pairs; all must be accepted.
    public func setMSRs(_ msrs: [(UInt32, UInt64)]) throws(KVMError) {
        let bytes = Int(skvm_msrs_size(UInt32(msrs.count)))
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
        defer { raw.deallocate() }
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        let list = raw.assumingMemoryBound(to: kvm_msrs.self)
        list.pointee.nmsrs = UInt32(msrs.count)
        let entries = skvm_msrs_entries(list)!
        for (i, (index, value)) in msrs.enumerated() {
            entries[i].index = index
            entries[i].data = value
        }
        let n = skvm_ioctl_ptr(fd, SKVM_SET_MSRS, raw)
        guard n == Int32(msrs.count) else {
            let failed = n >= 0 && Int(n) < msrs.count ? " (MSR 0x\(String(msrs[Int(n)].0, radix: 16)) refused)" : ""
            throw .ioctl("KVM_SET_MSRS\(failed)", errno: n < 0 ? errno : EINVAL)
        }
    }

    public func lapic() throws(KVMError) -> kvm_lapic_state {
        var l = kvm_lapic_state()
        guard skvm_ioctl_ptr(fd, SKVM_GET_LAPIC, &l) == 0 else { throw .ioctl("KVM_GET_LAPIC", errno: errno) }
        return l
    }

    public func setLAPIC(_ state: kvm_lapic_state) throws(KVMError) {
        var l = state
        guard skvm_ioctl_ptr(fd, SKVM_SET_LAPIC, &l) == 0 else { throw .ioctl("KVM_SET_LAPIC", errno: errno) }
    }

    /// Guest-virtual to guest-physical through the vCPU's current page tables.
    public func translate(_ linear: UInt64) -> UInt64? {
        var t = kvm_translation()
        t.linear_address = linear
        guard skvm_ioctl_ptr(fd, SKVM_TRANSLATE, &t) == 0, t.valid != 0 else { return nil }
        return t.physical_address
    }

    /// Ask the vCPU to leave KVM_RUN: set immediate_exit (so a KVM_RUN that is about to start
    /// returns at once) and let the caller signal the thread (so one already running returns).
    public func requestImmediateExit() {
        skvm_set_immediate_exit(run, 1)
    }
}

extension VCPU {
    /// Vectors waiting in the local APIC (IRR: requested, not yet taken) and in service (ISR:
    /// taken, no EOI yet), for reports on a guest that seems to wait forever.
    public func pendingVectors() -> (requested: [UInt8], inService: [UInt8], lvt0: UInt32, spurious: UInt32, taskPriority: UInt32)? {
        guard var l = try? lapic() else { return nil }
        func vectors(_ base: UInt32) -> [UInt8] {
            var v: [UInt8] = []
            for word in UInt32(0)..<8 {
                let bits = skvm_lapic_word(&l, base, word)
                for bit in UInt32(0)..<32 where bits & (1 << bit) != 0 { v.append(UInt8(word * 32 + bit)) }
            }
            return v
        }
        return (vectors(0x200), vectors(0x100), skvm_lapic_word(&l, 0x350, 0), skvm_lapic_word(&l, 0xF0, 0),
                skvm_lapic_word(&l, 0x80, 0))
    }
}
