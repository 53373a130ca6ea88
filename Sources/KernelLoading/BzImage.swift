import HostSupport
import Memory
import X86Platform

/// A Linux bzImage as the x86 boot protocol (Documentation/arch/x86/boot.rst) describes it:
/// a real-mode setup part of `setup_sects + 1` sectors with the setup header at 0x1F1, then
/// the protected-mode kernel (the decompressor and its compressed payload).
///
/// swiftvmm skips the real-mode part, as Firecracker does: it loads the protected-mode
/// kernel at its preferred address, fills boot_params itself (what the setup code would have
/// collected from the BIOS), and enters at the 64-bit entry, 0x200 past the load address.
public struct BzImage: Sendable {
    public let path: String
    /// Boot protocol version, e.g. 0x020F for 2.15.
    public let protocolVersion: UInt16
    public let setupSectors: Int
    public let loadFlags: UInt8
    public let xloadflags: UInt16
    public let code32Start: UInt32
    public let initrdAddressMax: UInt32
    public let kernelAlignment: UInt32
    public let relocatable: Bool
    /// The longest command line the kernel accepts, without the terminating NUL.
    public let commandLineSize: UInt32
    public let payloadOffset: UInt32
    public let payloadLength: UInt32
    public let preferredAddress: UInt64
    /// Memory the kernel needs from its load address on, to decompress in place.
    public let initSize: UInt32
    /// The setup header as the file has it, from 0x1F1 to its end (given by the jump at 0x200).
    public let setupHeader: ArraySlice<UInt8>
    public let kernelVersion: String?
    /// The protected-mode kernel's bytes.
    public let protectedMode: ArraySlice<UInt8>

    public static let minimumProtocol: UInt16 = 0x0206
    static let loadedHigh: UInt8 = 0x01
    static let canUseHeap: UInt8 = 0x80
    static let xlfKernel64: UInt16 = 0x01
    /// The 64-bit entry's offset from the load address.
    public static let entry64Offset: UInt64 = 0x200
    /// No kernel is loaded at or above 2^52, the x86 guest-physical limit.
    public static let highestLoadAddress: UInt64 = 1 << 52

    public static func isBzImage(_ bytes: [UInt8]) -> Bool {
        bytes.count >= 0x206 && bytes[0x202] == 0x48 && bytes[0x203] == 0x64 && bytes[0x204] == 0x72 && bytes[0x205] == 0x53
    }

    public var supports64BitEntry: Bool { xloadflags & Self.xlfKernel64 != 0 }

    /// Where the protected-mode kernel goes: its preferred address (2.10+), which is
    /// 1 MiB-aligned on every x86 kernel, or the historical 1 MiB.
    public var loadAddress: UInt64 {
        protocolVersion >= 0x020A && preferredAddress >= BootLayout.kernelStart ? preferredAddress : BootLayout.kernelStart
    }

    public var versionString: String {
        "\(protocolVersion >> 8).\(String(format2: protocolVersion & 0xFF))"
    }

    /// How the payload is compressed, from its magic bytes.
    public var payloadCompression: String {
        let start = protectedMode.startIndex + Int(payloadOffset)
        guard payloadLength > 0, start + 6 <= protectedMode.endIndex else { return "unknown" }
        return Compression.name(of: Array(protectedMode[start ..< start + 6]))
    }

    public init(bytes: [UInt8], path: String) throws(BootError) {
        self.path = path
        guard bytes.count >= 0x264, Self.isBzImage(bytes) else {
            throw .notAKernel(path: path, reason: bytes.count < 0x264 ? "truncated: \(bytes.count) bytes, shorter than a setup header" : "no 'HdrS' setup header")
        }
        let version = bytes.le(UInt16.self, at: 0x206)!
        guard version >= Self.minimumProtocol else {
            throw .unsupported(path: path, reason: "bzImage boot protocol \(version >> 8).\(String(format2: version & 0xFF)) is older than 2.06, the oldest supported")
        }
        protocolVersion = version
        var sects = Int(bytes[0x1F1])
        if sects == 0 { sects = 4 }
        setupSectors = sects
        let pmStart = (sects + 1) * 512
        guard pmStart < bytes.count else {
            throw .notAKernel(path: path, reason: "truncated: the setup code claims \(pmStart) bytes but the file has \(bytes.count)")
        }
        loadFlags = bytes[0x211]
        guard loadFlags & Self.loadedHigh != 0 else {
            throw .unsupported(path: path, reason: "a zImage (loaded low at 0x10000); only bzImages are supported")
        }
        xloadflags = bytes.le(UInt16.self, at: 0x236)!
        code32Start = bytes.le(UInt32.self, at: 0x214)!
        initrdAddressMax = bytes.le(UInt32.self, at: 0x22C)!
        kernelAlignment = bytes.le(UInt32.self, at: 0x230)!
        relocatable = bytes[0x234] != 0
        commandLineSize = bytes.le(UInt32.self, at: 0x238)!
        payloadOffset = bytes.le(UInt32.self, at: 0x248)!
        payloadLength = bytes.le(UInt32.self, at: 0x24C)!
        preferredAddress = bytes.le(UInt64.self, at: 0x258)!
        initSize = bytes.le(UInt32.self, at: 0x260)!
        let headerEnd = 0x202 + Int(bytes[0x201])
        setupHeader = bytes[0x1F1 ..< min(headerEnd, pmStart)]
        protectedMode = bytes[pmStart...]
        // The header's numbers are the file's word, not a promise: a preferred address near the
        // top of the address space would make the kernel's footprint (and its entry) wrap.
        let extent = max(UInt64(protectedMode.count), UInt64(initSize), Self.entry64Offset)
        if version >= 0x020A && preferredAddress > Self.highestLoadAddress - extent {
            throw .notAKernel(path: path, reason: "its preferred load address \(Diagnostics.hex(preferredAddress)) leaves no room for its \(extent) bytes below \(Diagnostics.hex(Self.highestLoadAddress))")
        }
        guard UInt64(payloadOffset) + UInt64(payloadLength) <= UInt64(protectedMode.count) else {
            throw .notAKernel(path: path, reason: "truncated: the payload (\(payloadLength) bytes at +\(payloadOffset)) extends past the end of the file")
        }
        let versionPointer = Int(bytes.le(UInt16.self, at: 0x20E)!)
        if versionPointer > 0, 0x200 + versionPointer < pmStart {
            let s = bytes[(0x200 + versionPointer) ..< pmStart].prefix { $0 != 0 }.prefix(200)
            kernelVersion = String(decoding: s, as: UTF8.self)
        } else {
            kernelVersion = nil
        }
    }

    /// The range the kernel occupies once loaded, including the room it needs to decompress.
    public var footprint: Range<UInt64> {
        loadAddress ..< loadAddress + max(UInt64(protectedMode.count), UInt64(initSize))
    }

    func load(into memory: GuestMemory, options: BootOptions, initrd: [UInt8]?) throws(BootError) -> LoadedKernel {
        let mode: EntryMode
        switch options.entry {
        case .auto where supports64BitEntry, .linux64:
            guard supports64BitEntry else {
                throw .unsupported(path: path, reason: "--entry=linux64, but the bzImage has no 64-bit entry (xloadflags bit 0 clear)")
            }
            mode = .longMode64(entry: loadAddress + Self.entry64Offset, bootParams: BootLayout.zeroPage)
        case .auto, .linux32:
            mode = .protected32(entry: loadAddress, bootParams: BootLayout.zeroPage)
        case .pvh:
            throw .unsupported(path: path, reason: "--entry=pvh needs an ELF kernel with a PVH note; a bzImage has none")
        }
        let room = footprint
        guard memory.contains(room.lowerBound, count: UInt64(room.count)) else {
            throw .doesNotFit(path: path, reason: "the kernel needs \(Diagnostics.hex(room.lowerBound))-\(Diagnostics.hex(room.upperBound - 1)) (\(MemorySize.format(UInt64(room.count))) at its load address) but the guest has \(MemorySize.format(memory.size)) of RAM")
        }
        let initrdRange = try initrd.map { b throws(BootError) in
            try Initrd.place(size: UInt64(b.count), memory: memory, above: room.upperBound,
                             maxAddress: UInt64(initrdAddressMax), path: options.initrdPath ?? "initrd")
        }
        // cmdline_size counts the characters, not the NUL.
        let line = try KernelLoader.checkCommandLine(options.commandLine, limit: Int(commandLineSize) + 1)

        try KernelLoader.writeChecked(Array(protectedMode), at: loadAddress, memory)
        if let initrd, let r = initrdRange { try KernelLoader.writeChecked(initrd, at: r.lowerBound, memory) }
        let map = KernelLoader.e820(memory: memory, reserved: options.reserved)
        try KernelLoader.writeBootData(into: memory, line: line, map: map, zeroPage: zeroPage(initrd: initrdRange),
                                       acpiRSDP: options.acpiRSDP)
        return LoadedKernel(format: "bzImage", entry: mode, loadedRanges: [room],
                            commandLine: options.commandLine, initrd: initrdRange, e820: map)
    }

    /// boot_params as the boot protocol wants them from a boot loader: the image's own setup
    /// header, with the loader's fields filled in.
    public func zeroPage(initrd: Range<UInt64>?) -> ZeroPage {
        var zp = ZeroPage()
        for (i, b) in setupHeader.enumerated() { zp.bytes[ZeroPage.setupHeader + i] = b }
        zp.set(UInt16(0xFFFF), at: ZeroPage.vidMode)          // "normal" video mode
        zp.set(UInt8(0xFF), at: ZeroPage.typeOfLoader)        // a loader with no assigned id
        zp.set(loadFlags | Self.loadedHigh | Self.canUseHeap, at: ZeroPage.loadFlags)
        zp.set(UInt16(0xFE00), at: ZeroPage.heapEndPtr)
        zp.set(UInt32(truncatingIfNeeded: loadAddress), at: ZeroPage.code32Start)
        if let initrd { zp.setRamdisk(address: initrd.lowerBound, size: UInt64(initrd.count)) }
        return zp
    }
}

extension String {
    /// Two decimal digits, as boot protocol minor versions are written (2.06).
    init(format2 v: UInt16) { self = v < 10 ? "0\(v)" : "\(v)" }
}

/// Kernel payload compression, recognised by magic bytes.
public enum Compression {
    public static func name(of magic: [UInt8]) -> String {
        func starts(_ m: [UInt8]) -> Bool { magic.count >= m.count && Array(magic.prefix(m.count)) == m }
        if starts([0x1F, 0x8B]) { return "gzip" }
        if starts([0x42, 0x5A, 0x68]) { return "bzip2" }
        if starts([0x5D, 0x00, 0x00]) { return "lzma" }
        if starts([0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00]) { return "xz" }
        if starts([0x89, 0x4C, 0x5A, 0x4F]) { return "lzo" }
        if starts([0x02, 0x21, 0x4C, 0x18]) { return "lz4" }
        if starts([0x28, 0xB5, 0x2F, 0xFD]) { return "zstd" }
        return "unknown"
    }
}

/// Little-endian reads from a file's bytes, bounds-checked: nil past the end.
extension Array where Element == UInt8 {
    func le<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T? {
        guard offset >= 0, offset <= count - MemoryLayout<T>.size else { return nil }
        var v: T = 0
        for i in 0..<MemoryLayout<T>.size { v |= T(self[offset + i]) << (8 * i) }
        return v
    }
}
