internal import CHost
import Glibc

/// A raw image in a file or a block device: pread/pwrite straight between the file and guest
/// RAM, fdatasync for a flush, hole punching for a discard where the file system can.
public final class FileBlockBackend: BlockBackend {
    public let path: String
    public let size: UInt64
    public let isReadOnly: Bool
    public let canDiscard: Bool
    let fd: Int32

    public enum OpenError: Error, CustomStringConvertible {
        case unreadable(path: String, errno: Int32)
        case notAFile(path: String)
        public var description: String {
            switch self {
            case .unreadable(let p, let e): return "cannot open block image \(p): \(String(cString: strerror(e)))"
            case .notAFile(let p): return "block image \(p) is not a regular file or block device"
            }
        }
    }

    /// Open `path` (read-only with `readOnly`).
    public init(path: String, readOnly: Bool) throws(OpenError) {
        let fd = open(path, (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC)
        guard fd >= 0 else { throw .unreadable(path: path, errno: errno) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG || (st.st_mode & S_IFMT) == S_IFBLK else {
            close(fd)
            throw .notAFile(path: path)
        }
        var bytes = UInt64(st.st_size)
        if (st.st_mode & S_IFMT) == S_IFBLK { bytes = UInt64(max(0, lseek(fd, 0, SEEK_END))) }
        self.path = path
        self.fd = fd
        self.size = bytes
        self.isReadOnly = readOnly
        // Punching a hole past the end of the file changes nothing; it tells whether the file
        // system supports it at all.
        canDiscard = !readOnly && sys_fallocate(fd, SYS_FALLOC_FL_PUNCH_HOLE | SYS_FALLOC_FL_KEEP_SIZE,
                                                Int(bytes + 512), 512) == 0
    }

    deinit { close(fd) }

    public func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws(BlockIOError) {
        var done = 0
        while done < count {
            let r = pread(fd, buffer + done, count - done, off_t(offset) + off_t(done))
            if r < 0 { if errno == EINTR { continue }; throw BlockIOError(errno: errno) }
            if r == 0 {
                // Past the end of a file that shrank under us: what a hole reads as.
                (buffer + done).initializeMemory(as: UInt8.self, repeating: 0, count: count - done)
                return
            }
            done += r
        }
    }

    public func write(from buffer: UnsafeRawPointer, count: Int, at offset: UInt64) throws(BlockIOError) {
        var done = 0
        while done < count {
            let r = pwrite(fd, buffer + done, count - done, off_t(offset) + off_t(done))
            if r < 0 { if errno == EINTR { continue }; throw BlockIOError(errno: errno) }
            // A write that moves nothing and reports no error would loop here forever.
            if r == 0 { throw BlockIOError(errno: EIO) }
            done += r
        }
    }

    public func flush() throws(BlockIOError) {
        if isReadOnly { return }
        guard fdatasync(fd) == 0 else { throw BlockIOError(errno: errno) }
    }

    public func discard(at offset: UInt64, count: UInt64) throws(BlockIOError) {
        guard canDiscard else { throw BlockIOError(errno: EOPNOTSUPP) }
        guard count > 0 else { return }
        guard sys_fallocate(fd, SYS_FALLOC_FL_PUNCH_HOLE | SYS_FALLOC_FL_KEEP_SIZE, Int(offset), Int(count)) == 0 else {
            throw BlockIOError(errno: errno)
        }
    }
}
