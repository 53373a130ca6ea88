import HostSupport

/// What the loaders see in a kernel file, for `swiftvmm inspect`: format, boot protocol,
/// version string, payload compression, entry points, load segments, and the intuited page
/// offset with how it was found. Built from the same parsers the loaders use.
public struct KernelInspection: Sendable {
    public struct Segment: Sendable {
        public let virtualAddress: UInt64
        public let physicalAddress: UInt64
        public let fileSize: UInt64
        public let memorySize: UInt64
        public let flags: String
    }

    public var path: String
    public var format = "unknown"
    public var size = 0
    public var bootProtocol: String? = nil
    public var kernelVersion: String? = nil
    public var compression: String? = nil
    public var entry32: UInt64? = nil
    public var entry64: UInt64? = nil
    public var entryPVH: UInt64? = nil
    public var loadAddress: UInt64? = nil
    public var segments: [Segment] = []
    public var physicalAddressesUsable: Bool? = nil
    public var pageOffset: UInt64? = nil
    public var pageOffsetMethod: String? = nil
    public var pageOffsetError: String? = nil
    /// What the loader would do with it: the error it would give, if any.
    public var problem: String? = nil

    public static func inspect(path: String) throws(BootError) -> KernelInspection {
        let bytes = try readFile(path)
        return inspect(bytes: bytes, path: path)
    }

    public static func inspect(bytes: [UInt8], path: String) -> KernelInspection {
        var r = KernelInspection(path: path)
        r.size = bytes.count
        if ELFImage.isELF(bytes) {
            do {
                let image = try ELFImage(bytes: bytes, path: path)
                r.format = image.elfClass == .elf64 ? "ELF64" : "ELF32"
                r.kernelVersion = ELFImage.linuxVersion(in: bytes)
                r.entryPVH = image.pvhEntry
                if image.elfClass == .elf64 { r.entry64 = image.entry } else { r.entry32 = image.entry }
                r.segments = image.segments.map {
                    Segment(virtualAddress: $0.virtualAddress, physicalAddress: $0.physicalAddress,
                            fileSize: $0.fileSize, memorySize: $0.memorySize,
                            flags: ($0.flags & 4 != 0 ? "R" : "-") + ($0.flags & 2 != 0 ? "W" : "-") + ($0.flags & 1 != 0 ? "X" : "-"))
                }
                r.physicalAddressesUsable = !PageOffset.physicalAddressesUnusable(image)
                do {
                    let found = try PageOffset.intuit(image: image, bytes: bytes)
                    r.pageOffset = found.pageOffset
                    r.pageOffsetMethod = "\(found.method): \(found.votes) of \(found.totalVotes) votes"
                } catch {
                    r.pageOffsetError = error.description
                }
            } catch {
                r.format = "ELF (unreadable)"
                r.problem = error.description
            }
        } else if BzImage.isBzImage(bytes) {
            r.format = "bzImage"
            do {
                let image = try BzImage(bytes: bytes, path: path)
                r.bootProtocol = image.versionString
                r.kernelVersion = image.kernelVersion
                r.compression = image.payloadCompression
                r.loadAddress = image.loadAddress
                r.entry32 = image.loadAddress
                if image.supports64BitEntry { r.entry64 = image.loadAddress + BzImage.entry64Offset }
            } catch {
                if bytes.count >= 0x208 { r.bootProtocol = "\(bytes[0x207]).\(String(format2: UInt16(bytes[0x206])))" }
                r.problem = error.description
            }
        } else {
            r.problem = "not a kernel image: neither an ELF file nor a bzImage"
        }
        return r
    }

    public var text: String {
        var lines: [String] = []
        func add(_ k: String, _ v: String?) { if let v { lines.append(k.padding(20) + v) } }
        add("file:", path)
        add("format:", format)
        add("size:", "\(size) bytes")
        add("boot protocol:", bootProtocol)
        add("kernel version:", kernelVersion)
        add("compression:", compression)
        add("load address:", loadAddress.map { Diagnostics.hex($0) })
        add("32-bit entry:", entry32.map { Diagnostics.hex($0) })
        add("64-bit entry:", entry64.map { Diagnostics.hex($0) })
        add("PVH entry:", entryPVH.map { Diagnostics.hex($0) })
        if !segments.isEmpty {
            lines.append("segments:           virtual -> physical, file/memory size, flags")
            for s in segments {
                lines.append("  \(Diagnostics.hex(s.virtualAddress, width: 16)) -> \(Diagnostics.hex(s.physicalAddress, width: 16))  \(Diagnostics.hex(s.fileSize))/\(Diagnostics.hex(s.memorySize))  \(s.flags)")
            }
        }
        add("physical addresses:", physicalAddressesUsable.map { $0 ? "usable" : "unusable (converted with the page offset)" })
        if let pageOffset {
            add("page offset:", "\(Diagnostics.hex(pageOffset)) (\(pageOffsetMethod ?? ""))")
        } else if let pageOffsetError {
            add("page offset:", "unknown: \(pageOffsetError)")
        }
        add("problem:", problem)
        return lines.joined(separator: "\n")
    }

    /// One JSON object; numbers that are addresses are strings in hex (JSON numbers lose
    /// precision above 2^53), sizes are numbers.
    public var json: String {
        func addr(_ v: UInt64?) -> JSON { .optional(v.map { Diagnostics.hex($0) }) }
        let object: JSON = .object([
            ("file", .string(path)),
            ("format", .string(format)),
            ("size", .int(Int64(size))),
            ("boot_protocol", .optional(bootProtocol)),
            ("kernel_version", .optional(kernelVersion)),
            ("compression", .optional(compression)),
            ("load_address", addr(loadAddress)),
            ("entry32", addr(entry32)),
            ("entry64", addr(entry64)),
            ("entry_pvh", addr(entryPVH)),
            ("segments", .array(segments.map {
                .object([("virtual", .string(Diagnostics.hex($0.virtualAddress))),
                         ("physical", .string(Diagnostics.hex($0.physicalAddress))),
                         ("file_size", .uint($0.fileSize)), ("memory_size", .uint($0.memorySize)),
                         ("flags", .string("\($0.flags)"))])
            })),
            ("physical_addresses_usable", physicalAddressesUsable.map { .bool($0) } ?? .null),
            ("page_offset", addr(pageOffset)),
            ("page_offset_method", .optional(pageOffsetMethod)),
            ("page_offset_error", .optional(pageOffsetError)),
            ("problem", .optional(problem)),
        ])
        return object.serialized(indent: 2)
    }
}

extension String {
    func padding(_ width: Int) -> String { count >= width ? self + " " : self + String(repeating: " ", count: width - count) }
}
