/// A structure a guest reads as little-endian fields at fixed byte offsets: boot_params,
/// hvm_start_info, the MP and ACPI tables. Conforming types get the field stores and loads,
/// written once here, and name the offsets themselves.
public protocol LittleEndianBytes {
    var bytes: [UInt8] { get set }
}

extension LittleEndianBytes {
    public mutating func set<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        withUnsafeBytes(of: value.littleEndian) { src in
            for (i, b) in src.enumerated() { bytes[offset + i] = b }
        }
    }

    /// An ASCII signature or ID field (the tables' "PCMP", "RSD PTR ", OEM IDs).
    public mutating func put(_ ascii: String, at offset: Int) {
        for (i, c) in ascii.utf8.enumerated() { bytes[offset + i] = c }
    }

    public func get<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        var v: T = 0
        withUnsafeMutableBytes(of: &v) { dst in
            for i in 0..<MemoryLayout<T>.size { dst[i] = bytes[offset + i] }
        }
        return T(littleEndian: v)
    }
}

/// A little-endian byte buffer for building wire structures that have no type of their own.
public struct Bytes: LittleEndianBytes {
    public var bytes: [UInt8]
    public init(count: Int) { bytes = [UInt8](repeating: 0, count: count) }
}
