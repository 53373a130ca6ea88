import Glibc

/// Create or truncate `path` for swiftvmm's own output (--report, --console-log). A FIFO is
/// fine if someone reads it; one nobody reads must fail now (ENXIO), not block the open for
/// ever, so it is opened non-blocking and then made blocking again for the writes.
/// Returns the fd, or -1 with errno set.
public func openOutputFile(_ path: String) -> Int32 {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NONBLOCK, 0o644)
    guard fd >= 0 else { return -1 }
    let flags = fcntl(fd, F_GETFL)
    if flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0 {
        let e = errno
        close(fd)
        errno = e
        return -1
    }
    return fd
}
