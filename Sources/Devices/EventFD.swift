import Glibc
internal import CHost

/// An eventfd: a counter in the host kernel that one side bumps and the other polls. The
/// doorbells a guest rings and the interrupts a device raises are eventfds that KVM signals
/// or reads itself, so neither costs an exit to user space.
public final class EventFD: Sendable {
    public let fd: Int32

    /// Non-blocking and close-on-exec. Failing to make one means the process is out of file
    /// descriptors, which nothing here can recover from.
    public init() {
        fd = sys_eventfd(0, SYS_EFD_CLOEXEC | SYS_EFD_NONBLOCK)
        precondition(fd >= 0, "eventfd: \(String(cString: strerror(errno)))")
    }

    deinit { close(fd) }

    @inline(__always)
    public func signal() {
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }

    /// Reset the counter (a non-blocking read); returns how many signals it held.
    @discardableResult @inline(__always)
    public func drain() -> UInt64 {
        var value: UInt64 = 0
        return read(fd, &value, 8) == 8 ? value : 0
    }
}
