/// A little-endian byte buffer for building wire structures.
public struct Bytes {
    public var bytes: [UInt8]
    public init(count: Int) { bytes = [UInt8](repeating: 0, count: count) }
    public mutating func set<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        withUnsafeBytes(of: value.littleEndian) { src in
            for (i, b) in src.enumerated() { bytes[offset + i] = b }
        }
    }
    /// An ASCII signature or ID field (the tables' "PCMP", "RSD PTR ", OEM IDs).
    public mutating func put(_ ascii: String, at offset: Int) {
        for (i, c) in ascii.utf8.enumerated() { bytes[offset + i] = c }
    }
}
