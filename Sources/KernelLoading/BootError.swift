import Glibc
import HostSupport
import RunControl

/// Why a kernel (or initrd) cannot be booted. Each case names the file and what is wrong
/// with it, in one line, and maps to a documented exit code.
public enum BootError: Error, CustomStringConvertible, Sendable {
    case unreadable(path: String, errno: Int32)
    /// A FIFO, a device, a socket: a FIFO nobody writes would block the open for ever.
    case notAFile(path: String)
    case notAKernel(path: String, reason: String)
    case unsupported(path: String, reason: String)
    case doesNotFit(path: String, reason: String)
    case commandLineTooLong(length: Int, maximum: Int)

    public var description: String {
        switch self {
        case .unreadable(let path, let e): return "\(path): \(String(cString: strerror(e)))"
        case .notAFile(let path): return "\(path): not a regular file"
        case .notAKernel(let path, let reason): return "\(path): not a kernel image: \(reason)"
        case .unsupported(let path, let reason): return "\(path): \(reason)"
        case .doesNotFit(let path, let reason): return "\(path): \(reason)"
        case .commandLineTooLong(let length, let maximum):
            return "the guest command line is \(length) bytes; the kernel accepts at most \(maximum - 1)"
        }
    }

    public var exitCode: Int32 {
        switch self {
        case .unreadable, .notAFile: return ExitStatus.unreadableFile
        case .notAKernel, .unsupported, .doesNotFit: return ExitStatus.malformedImage
        case .commandLineTooLong: return ExitStatus.usage
        }
    }
}

/// Read a whole file. Kernels are tens of MiB at most; reading beats mapping for simplicity
/// and means a file changed underneath us cannot fault the VMM.
public func readFile(_ path: String, limit: Int = 1 << 31) throws(BootError) -> [UInt8] {
    let (fd, size): (Int32, Int)
    switch openInputFile(path) {
    case .success(let file): (fd, size) = file
    case .failure(.system(let e)): throw .unreadable(path: path, errno: e)
    case .failure(.notRegular): throw .notAFile(path: path)
    }
    defer { close(fd) }
    guard size <= limit else {
        throw .doesNotFit(path: path, reason: "file is \(size) bytes, larger than any image swiftvmm loads")
    }
    switch readOpenFile(fd, size: size) {
    case .success(let bytes): return bytes
    case .failure(.system(let e)): throw .unreadable(path: path, errno: e)
    case .failure(.notRegular): throw .notAFile(path: path)
    }
}
