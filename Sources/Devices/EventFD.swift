import Glibc
internal import CHost

/// eventfd helpers: a counter in the kernel that one thread bumps and another polls.
public func makeEventFD() -> Int32 {
    let fd = sys_eventfd(0, SYS_EFD_CLOEXEC | SYS_EFD_NONBLOCK)
    precondition(fd >= 0, "eventfd: \(String(cString: strerror(errno)))")
    return fd
}

func signalEventFD(_ fd: Int32) {
    var one: UInt64 = 1
    _ = write(fd, &one, 8)
}

func drainEventFD(_ fd: Int32) {
    var value: UInt64 = 0
    _ = read(fd, &value, 8)
}

public func closeFD(_ fd: Int32) { close(fd) }
