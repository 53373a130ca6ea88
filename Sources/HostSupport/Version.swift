/// swiftvmm's version, shown by `--version` and returned by the version hypercall.
public enum SwiftVMMVersion {
    public static let string = "0.1.0"
    /// The hypercall ABI version; bumped when a number or calling convention changes meaning.
    public static let hypercallABI: UInt32 = 1
}
