/// Guest RAM sizes as users write them: `64m`, `1g`, `512k`, `2G`, or a bare number of MiB
/// (lguest's convention). Sizes must be whole pages, non-zero, and at least `minimum`.
public struct MemorySize: Equatable, Sendable, CustomStringConvertible {
    public let bytes: UInt64

    public static let pageSize: UInt64 = 4096
    /// Below this there is no room for the boot structures under 1 MiB plus a kernel above it.
    public static let minimum: UInt64 = 2 << 20

    public init(bytes: UInt64) { self.bytes = bytes }

    public enum ParseError: Error, CustomStringConvertible, Equatable, Sendable {
        case empty
        case malformed(String)
        case zero
        case overflow(String)
        case notPageAligned(String, bytes: UInt64)
        case tooSmall(String, bytes: UInt64)

        public var description: String {
            switch self {
            case .empty:
                return "memory size is empty; give it as e.g. 64m, 1g, or a number of MiB"
            case .malformed(let s):
                return "memory size '\(s)' is not a size; give it as e.g. 64m, 1g, 512k, or a number of MiB"
            case .zero:
                return "memory size must not be zero"
            case .overflow(let s):
                return "memory size '\(s)' is absurdly large"
            case .notPageAligned(let s, let b):
                return "memory size '\(s)' (\(b) bytes) is not a whole number of 4 KiB pages"
            case .tooSmall(let s, let b):
                return "memory size '\(s)' (\(b) bytes) is too small: swiftvmm needs at least 2 MiB"
            }
        }
    }

    public init(parsing text: String) throws(ParseError) {
        let s = text.lowercased()
        guard !s.isEmpty else { throw .empty }
        var digits = Substring(s)
        var unit = Substring("")
        if let i = s.firstIndex(where: { !$0.isASCII || !$0.isNumber }) {
            digits = s[..<i]
            unit = s[i...]
        }
        guard !digits.isEmpty, let value = UInt64(digits) else { throw .malformed(text) }
        let shift: UInt64
        switch unit {
        case "": shift = 20                              // bare number: MiB, as lguest
        case "k", "kb", "kib": shift = 10
        case "m", "mb", "mib": shift = 20
        case "g", "gb", "gib": shift = 30
        case "t", "tb", "tib": shift = 40
        default: throw .malformed(text)
        }
        guard value != 0 else { throw .zero }
        guard value <= (UInt64.max >> shift) else { throw .overflow(text) }
        let bytes = value << shift
        guard bytes % Self.pageSize == 0 else { throw .notPageAligned(text, bytes: bytes) }
        guard bytes >= Self.minimum else { throw .tooSmall(text, bytes: bytes) }
        self.bytes = bytes
    }

    /// "64 MiB", "1.5 GiB": how sizes are shown back to users.
    public var description: String { Self.format(bytes) }

    public static func format(_ bytes: UInt64) -> String {
        let units: [(UInt64, String)] = [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
        for (scale, name) in units where bytes >= scale {
            var whole = bytes / scale
            if bytes % scale == 0 { return "\(whole) \(name)" }
            // Rounded to a tenth from the remainder: bytes * 10 would overflow past 1.6 EiB.
            var tenths = (bytes % scale * 10 + scale / 2) / scale
            if tenths == 10 { whole += 1; tenths = 0 }
            return "\(whole).\(tenths) \(name)"
        }
        return "\(bytes) bytes"
    }
}
