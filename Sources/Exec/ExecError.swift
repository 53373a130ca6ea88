import Glibc
import HostSupport

/// Why `swiftvmm exec` cannot build its initramfs. Each case names the file, entry or value
/// at fault and reads as one line after "swiftvmm: ".
public enum ExecError: Error, CustomStringConvertible, Equatable, Sendable {
    case unreadable(path: String, errno: Int32)
    /// A FIFO, a device, a socket: a FIFO nobody writes would block the open for ever.
    case notAFile(path: String)
    case tooLarge(path: String, size: Int, limit: Int)
    /// The init binary is not something the kernel can start as /init in an initramfs that
    /// holds nothing else.
    case notAStaticExecutable(path: String, reason: String)
    /// `what` names the field ("argument 3", "cwd", "writable share 1's tag").
    case invalidSpec(what: String, reason: String)
    /// `name` is the archive path as given.
    case archive(name: String, reason: String)
    /// `line` is 1-based; 0 when the problem is the file as a whole.
    case modulesIndex(path: String, line: Int, reason: String)
    /// The modules directory has no modules.dep: a tree copied without running depmod.
    case noModulesDep(directory: String)
    /// Each module in the circle, the first again at the end.
    case dependencyCycle([String])
    case dependencyTooDeep([String])

    public var description: String {
        switch self {
        case .unreadable(let path, let e): return "\(path): \(String(cString: strerror(e)))"
        case .notAFile(let path): return "\(path): not a regular file"
        case .tooLarge(let path, let size, let limit):
            return "\(path): \(size) bytes, more than the \(limit) swiftvmm exec accepts for it"
        case .notAStaticExecutable(let path, let reason):
            return "\(path): \(reason); the exec init must be a static x86-64 executable (make -C guests/init)"
        case .invalidSpec(let what, let reason): return "exec: \(what): \(reason)"
        case .archive(let name, let reason): return "initramfs entry \(quote(name)): \(reason)"
        case .modulesIndex(let path, let line, let reason):
            return line > 0 ? "\(path):\(line): \(reason)" : "\(path): \(reason)"
        case .noModulesDep(let directory):
            return "\(directory): no modules.dep; generate it with depmod (`depmod -b BASE VERSION` for BASE/lib/modules/VERSION)"
        case .dependencyCycle(let chain):
            return "kernel modules depend on each other in a circle: \(chain.joined(separator: " -> "))"
        case .dependencyTooDeep(let chain):
            return "kernel module dependencies nest more than \(chain.count - 1) deep: \(chain.joined(separator: " -> "))"
        }
    }
}

/// `s` for a message: in double quotes, control characters and quotes escaped, cut after
/// 120 characters, so that a hostile or binary value still prints as one readable line.
func quote(_ s: String) -> String {
    var out = "\""
    for (i, scalar) in s.unicodeScalars.enumerated() {
        if i == 120 { out += "\"..."; return out }
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case _ where scalar.value < 0x20 || scalar.value == 0x7F:
            out += "\\x" + (scalar.value < 0x10 ? "0" : "") + String(scalar.value, radix: 16)
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out + "\""
}

/// Read a whole file of at most `limit` bytes: an init binary, a module, an index file.
/// Reading beats mapping: a file changed underneath cannot fault swiftvmm.
func readWholeFile(_ path: String, limit: Int) throws(ExecError) -> [UInt8] {
    let (fd, size): (Int32, Int)
    switch openInputFile(path) {
    case .success(let file): (fd, size) = file
    case .failure(.system(let e)): throw .unreadable(path: path, errno: e)
    case .failure(.notRegular): throw .notAFile(path: path)
    }
    defer { close(fd) }
    guard size >= 0, size <= limit else { throw .tooLarge(path: path, size: size, limit: limit) }
    switch readOpenFile(fd, size: size) {
    case .success(let bytes): return bytes
    case .failure(.system(let e)): throw .unreadable(path: path, errno: e)
    case .failure(.notRegular): throw .notAFile(path: path)
    }
}
