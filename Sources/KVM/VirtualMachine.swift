import CKVM
import Glibc

/// A KVM virtual machine: its memory slots, in-kernel interrupt controllers and vCPUs.
/// Unchecked Sendable: an fd wrapper; the ioctls on it are thread-safe in the kernel.
public final class VirtualMachine: @unchecked Sendable {
    public let host: KVMHost
    public let fd: Int32

    init(host: KVMHost, fd: Int32) {
        self.host = host
        self.fd = fd
    }

    deinit { close(fd) }

    /// Register `size` bytes of host memory at `host` as guest-physical `guestAddress`.
    /// A read-only slot makes guest writes exit to user space as MMIO instead of landing.
    public func setMemoryRegion(slot: UInt32, guestAddress: UInt64, size: UInt64,
                                host: UnsafeMutableRawPointer, readOnly: Bool = false) throws(KVMError) {
        var region = kvm_userspace_memory_region(
            slot: slot, flags: readOnly ? SKVM_MEM_READONLY : 0,
            guest_phys_addr: guestAddress, memory_size: size,
            userspace_addr: UInt64(UInt(bitPattern: host)))
        guard skvm_ioctl_ptr(fd, SKVM_SET_USER_MEMORY_REGION, &region) == 0 else {
            throw .ioctl("KVM_SET_USER_MEMORY_REGION (slot \(slot), guest 0x\(String(guestAddress, radix: 16)), \(size) bytes)", errno: errno)
        }
    }

    /// Intel VT-x needs three pages for a real-mode TSS and one for an identity-mapped page
    /// table somewhere in guest-physical space that is not RAM. Harmless elsewhere; always set.
    public func setTSSAddress(_ address: UInt64) throws(KVMError) {
        guard skvm_ioctl(fd, SKVM_SET_TSS_ADDR, UInt(address)) == 0 else {
            throw .ioctl("KVM_SET_TSS_ADDR", errno: errno)
        }
    }

    public func setIdentityMapAddress(_ address: UInt64) throws(KVMError) {
        var addr = address
        guard skvm_ioctl_ptr(fd, SKVM_SET_IDENTITY_MAP_ADDR, &addr) == 0 else {
            throw .ioctl("KVM_SET_IDENTITY_MAP_ADDR", errno: errno)
        }
    }

    /// The in-kernel PIC pair, IOAPIC and per-vCPU LAPICs: interrupts never need user space.
    public func createIRQChip() throws(KVMError) {
        guard skvm_ioctl(fd, SKVM_CREATE_IRQCHIP, 0) == 0 else {
            throw .ioctl("KVM_CREATE_IRQCHIP", errno: errno)
        }
    }

    /// The in-kernel 8254 timer (with a dummy speaker port so port 0x61 stays in the kernel).
    public func createPIT() throws(KVMError) {
        var config = kvm_pit_config()
        config.flags = SKVM_PIT_SPEAKER_DUMMY
        guard skvm_ioctl_ptr(fd, SKVM_CREATE_PIT2, &config) == 0 else {
            throw .ioctl("KVM_CREATE_PIT2", errno: errno)
        }
    }

    /// Drive an interrupt line of the in-kernel PIC/IOAPIC. Safe from any thread.
    @inline(__always)
    public func setIRQLine(_ gsi: UInt32, level: Bool) {
        var line = kvm_irq_level()
        line.irq = gsi
        line.level = level ? 1 : 0
        _ = skvm_ioctl_ptr(fd, SKVM_IRQ_LINE, &line)
    }

    public func createVCPU(id: Int) throws(KVMError) -> VCPU {
        let vcpufd = skvm_ioctl(fd, SKVM_CREATE_VCPU, UInt(id))
        guard vcpufd >= 0 else { throw .ioctl("KVM_CREATE_VCPU \(id)", errno: errno) }
        let size: Int
        do { size = try host.vcpuMmapSize() } catch { close(vcpufd); throw error }
        guard let run = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpufd, 0),
              run != MAP_FAILED else {
            let e = errno
            close(vcpufd)
            throw .mmap(what: "kvm_run of vCPU \(id)", bytes: size, errno: e)
        }
        return VCPU(vm: self, id: id, fd: vcpufd, run: run.assumingMemoryBound(to: kvm_run.self), runSize: size)
    }
}
