internal import CHost
import Glibc

/// A host tap device with a vnet header, so frames cross with the virtio-net header and no
/// copying. Reads are non-blocking: frames arriving while the guest has no buffers wait in
/// the tap's own queue, which the host kernel bounds (txqueuelen) and counts drops of.
public final class TapBackend: NetworkBackend {
    public static let headerSize = 12
    public let name: String
    let fd: Int32

    public enum TapError: Error, CustomStringConvertible {
        case badName(String)
        case open(name: String, step: String, errno: Int32)
        public var description: String {
            switch self {
            case .badName(let n): return "tap name '\(n)' must be 1 to 15 characters of letters, digits, '-', '_' or '.'"
            case .open(let n, let step, let e):
                var hint = ""
                if e == EPERM || e == EACCES { hint = " (creating or attaching a tap needs CAP_NET_ADMIN, or a tap made for this user with `ip tuntap add NAME mode tap user USER`)" }
                return "cannot attach to tap \(n): \(step): \(String(cString: strerror(e)))\(hint)"
            }
        }
    }

    /// Attach to tap `name`, creating it if it does not exist.
    public init(name: String) throws(TapError) {
        guard !name.isEmpty, name.utf8.count < Int(SYS_IFNAMSIZ),
              name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }) else {
            throw .badName(name)
        }
        var step: UnsafePointer<CChar>? = nil
        let fd = sys_tap_open(name, Int32(Self.headerSize), &step)
        guard fd >= 0 else { throw .open(name: name, step: step.map { String(cString: $0) } ?? "?", errno: -fd) }
        // A tap we just created is down; one that existed keeps the state its owner gave it.
        _ = sys_interface_up(name)
        self.name = name
        self.fd = fd
    }

    deinit { close(fd) }

    public var receiveFD: Int32 { fd }

    public func receive(into buffer: UnsafeMutableRawPointer, capacity: Int) -> Int {
        // EAGAIN: nothing waiting. Never more than asked for, whatever read says.
        min(max(0, read(fd, buffer, capacity)), capacity)
    }

    public func send(_ pieces: UnsafeBufferPointer<Glibc.iovec>) -> Bool {
        writev(fd, pieces.baseAddress, Int32(pieces.count)) >= 0
    }
}
