// KVM: /dev/kvm, its VMs and vCPUs as typed wrappers around the ioctls (KVMHost, VirtualMachine,
// VCPU), the interrupt routing and eventfd ioctls, and KVMError. No policy: what the machine does
// with them is in Machine.

import CKVM
import Glibc

/// The /dev/kvm system file descriptor: API version, capabilities, and the factory for VMs.
/// Unchecked Sendable: an fd wrapper; the ioctls on it are thread-safe in the kernel.
public final class KVMHost: @unchecked Sendable {
    public let fd: Int32

    /// The capabilities swiftvmm cannot run without, checked once at open so a host that lacks
    /// one fails up front with its name rather than later with an obscure ioctl error.
    public static let requiredCapabilities: [(Int32, String)] = [
        (SKVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"),
        (SKVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"),
        (SKVM_CAP_PIT2, "KVM_CAP_PIT2"),
        (SKVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR"),
        (SKVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"),
        (SKVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"),
        (SKVM_CAP_READONLY_MEM, "KVM_CAP_READONLY_MEM"),
        (SKVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD"),
        (SKVM_CAP_IRQFD, "KVM_CAP_IRQFD"),
    ]

    public init(path: String = "/dev/kvm") throws(KVMError) {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw .unavailable(path: path, errno: errno) }
        self.fd = fd
        let version = skvm_ioctl(fd, SKVM_GET_API_VERSION, 0)
        guard version == 12 else {
            close(fd)
            throw .apiVersion(version)
        }
        for (cap, name) in Self.requiredCapabilities where skvm_ioctl(fd, SKVM_CHECK_EXTENSION, UInt(cap)) <= 0 {
            close(fd)
            throw .missingCapability(name)
        }
    }

    deinit { close(fd) }

    /// KVM_CHECK_EXTENSION: 0 when absent, otherwise a capability-specific value.
    public func capability(_ cap: Int32) -> Int32 {
        max(0, skvm_ioctl(fd, SKVM_CHECK_EXTENSION, UInt(cap)))
    }

    /// The number of vCPUs KVM recommends (KVM_CAP_NR_VCPUS); running more than this is refused.
    public var recommendedVCPUs: Int {
        let n = capability(SKVM_CAP_NR_VCPUS)
        return n > 0 ? Int(n) : 4
    }

    public func vcpuMmapSize() throws(KVMError) -> Int {
        let size = skvm_ioctl(fd, SKVM_GET_VCPU_MMAP_SIZE, 0)
        guard size > 0 else { throw .ioctl("KVM_GET_VCPU_MMAP_SIZE", errno: errno) }
        return Int(size)
    }

    /// KVM_GET_SUPPORTED_CPUID: what this host can show a guest.
    public func supportedCPUID() throws(KVMError) -> [kvm_cpuid_entry2] {
        var capacity: UInt32 = 128
        while true {
            let bytes = Int(skvm_cpuid2_size(capacity))
            let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
            defer { raw.deallocate() }
            raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
            let cpuid = raw.assumingMemoryBound(to: kvm_cpuid2.self)
            cpuid.pointee.nent = capacity
            if skvm_ioctl_ptr(fd, SKVM_GET_SUPPORTED_CPUID, raw) == 0 {
                let entries = skvm_cpuid2_entries(cpuid)!
                return (0..<Int(cpuid.pointee.nent)).map { entries[$0] }
            }
            guard errno == E2BIG, capacity < 4096 else {
                throw .ioctl("KVM_GET_SUPPORTED_CPUID", errno: errno)
            }
            capacity *= 2
        }
    }

    public func createVM() throws(KVMError) -> VirtualMachine {
        let vmfd = skvm_ioctl(fd, SKVM_CREATE_VM, 0)
        guard vmfd >= 0 else { throw .ioctl("KVM_CREATE_VM", errno: errno) }
        return VirtualMachine(host: self, fd: vmfd)
    }
}
