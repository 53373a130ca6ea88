import Glibc

/// Why a file swiftvmm reads (a kernel, an initrd, symbols) cannot be opened.
public enum InputFileError: Error, Equatable, CustomStringConvertible {
    case system(Int32)
    /// A FIFO, a device, a socket.
    case notRegular

    public var description: String {
        switch self {
        case .system(let e): return String(cString: strerror(e))
        case .notRegular: return "not a regular file"
        }
    }
}

/// Open `path` for reading if it is a regular file: its fd and size. Non-blocking, so a FIFO
/// nobody writes fails now instead of blocking the open for ever (regular files ignore the flag).
public func openInputFile(_ path: String) -> Result<(fd: Int32, size: Int), InputFileError> {
    let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
    guard fd >= 0 else { return .failure(.system(errno)) }
    var st = stat()
    guard fstat(fd, &st) == 0 else {
        let e = errno
        close(fd)
        return .failure(.system(e))
    }
    let type = st.st_mode & S_IFMT
    guard type == S_IFREG else {
        close(fd)
        return .failure(type == S_IFDIR ? .system(EISDIR) : .notRegular)
    }
    return .success((fd, Int(st.st_size)))
}

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

/// Write all `count` bytes to `fd`, however many calls that takes; 0, or the errno that
/// stopped it (a closed pipe: EPIPE). An fd its owner made non-blocking is waited on (poll),
/// not spun on.
@discardableResult
public func writeFully(_ fd: Int32, _ p: UnsafeRawPointer, _ count: Int) -> Int32 {
    var off = 0
    while off < count {
        let n = Glibc.write(fd, p + off, count - off)
        if n < 0 {
            if errno == EINTR { continue }
            if errno == EAGAIN {
                var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                _ = poll(&pfd, 1, 1000)
                continue
            }
            return errno
        }
        off += n
    }
    return 0
}

/// Read `size` bytes from the start of an open file (one `openInputFile` gave); fewer if it
/// shrank while being read. A failed read is `.system(errno)`.
public func readOpenFile(_ fd: Int32, size: Int) -> Result<[UInt8], InputFileError> {
    var bytes = [UInt8](repeating: 0, count: max(0, size))
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + done, $0.count - done) }
        if n < 0 { if errno == EINTR { continue }; return .failure(.system(errno)) }
        if n == 0 { bytes.removeLast(bytes.count - done); break }   // shrank while being read
        done += n
    }
    return .success(bytes)
}
