import HostSupport

/// One entry of the BIOS e820 memory map, the form every x86 kernel understands.
public struct E820Entry: Equatable, Sendable, CustomStringConvertible {
    public enum Kind: UInt32, Sendable {
        case ram = 1
        case reserved = 2
    }
    public let address: UInt64
    public let size: UInt64
    public let type: Kind

    public init(address: UInt64, size: UInt64, type: Kind) {
        self.address = address
        self.size = size
        self.type = type
    }

    public var end: UInt64 { address + size }

    /// As Linux prints it: `[mem 0x0000000000000000-0x0000000000001fff] usable`.
    public var description: String {
        "[mem \(Diagnostics.hex(address, width: 16))-\(Diagnostics.hex(end - 1, width: 16))] \(type == .ram ? "usable" : "reserved")"
    }
}

public enum E820 {
    /// The memory map a guest is given: RAM regions, with the areas below 1 MiB that are not
    /// the guest's to use (`reserved`, e.g. the hypercall page) and the EBDA/BIOS area
    /// (640 KiB–1 MiB) cut out as reserved.
    public static func build(ram: [(address: UInt64, size: UInt64)], reserved: [Range<UInt64>]) -> [E820Entry] {
        var holes = reserved + [BootLayout.lowRAMEnd ..< BootLayout.kernelStart]
        holes.sort { $0.lowerBound < $1.lowerBound }
        var map: [E820Entry] = []
        for region in ram {
            var cursor = region.address
            let end = region.address + region.size
            for hole in holes where hole.lowerBound < end && hole.upperBound > cursor {
                if hole.lowerBound > cursor {
                    map.append(E820Entry(address: cursor, size: hole.lowerBound - cursor, type: .ram))
                }
                let rEnd = min(hole.upperBound, end)
                let rStart = max(hole.lowerBound, cursor)
                map.append(E820Entry(address: rStart, size: rEnd - rStart, type: .reserved))
                cursor = rEnd
            }
            if cursor < end { map.append(E820Entry(address: cursor, size: end - cursor, type: .ram)) }
        }
        return map
    }
}
