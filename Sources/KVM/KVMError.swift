import Glibc

/// Everything that can go wrong between swiftvmm and /dev/kvm, with what a user needs to act on it.
public enum KVMError: Error, CustomStringConvertible, Sendable {
    /// /dev/kvm could not be opened.
    case unavailable(path: String, errno: Int32)
    /// The kernel speaks a KVM API other than the stable version 12.
    case apiVersion(Int32)
    /// A capability swiftvmm cannot work without.
    case missingCapability(String)
    /// An ioctl failed.
    case ioctl(String, errno: Int32)
    /// The host refused a mapping (guest RAM, kvm_run).
    case mmap(what: String, bytes: Int, errno: Int32)
    /// More vCPUs than this host's KVM allows.
    case tooManyVCPUs(requested: Int, allowed: Int)

    public var description: String {
        switch self {
        case .unavailable(let path, let e):
            let hint: String
            switch e {
            case ENOENT: hint = " (no KVM on this host: is the kvm module loaded, or is this a VM without nested virtualization?)"
            case EACCES, EPERM: hint = " (permission denied: add yourself to the 'kvm' group or run as root)"
            default: hint = ""
            }
            return "cannot open \(path): \(errorString(e))\(hint)"
        case .apiVersion(let v):
            return "KVM API version is \(v), swiftvmm needs 12"
        case .missingCapability(let name):
            return "this host's KVM lacks \(name), which swiftvmm requires"
        case .ioctl(let name, let e):
            return "\(name) failed: \(errorString(e))"
        case .mmap(let what, let bytes, let e):
            return "cannot map \(what) (\(bytes) bytes): \(errorString(e))"
        case .tooManyVCPUs(let requested, let allowed):
            return "\(requested) vCPUs requested, but this host's KVM allows at most \(allowed)"
        }
    }
}

/// strerror(3) as a Swift string.
public func errorString(_ e: Int32) -> String {
    String(cString: strerror(e))
}
