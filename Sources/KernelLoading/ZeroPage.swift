import X86Platform

/// Linux's `struct boot_params` (the "zero page", one 4 KiB page), written field by field at
/// the byte offsets Documentation/arch/x86/zero-page.rst and boot.rst give.
public struct ZeroPage: LittleEndianBytes {
    public static let size = 4096

    // Offsets into boot_params.
    public static let acpiRSDPAddr = 0x070        // u64: where the ACPI RSDP is (read by every 64-bit
                                                  // Linux since 5.0; older ones scan for it)
    public static let extCmdLinePtr = 0x0C8       // u32: high 32 bits of cmd_line_ptr
    public static let e820Entries = 0x1E8         // u8: number of e820 entries
    public static let setupHeader = 0x1F1         // start of struct setup_header
    public static let setupSects = 0x1F1          // u8
    public static let bootFlag = 0x1FE            // u16: 0xAA55
    public static let headerMagic = 0x202         // u32: "HdrS"
    public static let version = 0x206             // u16: boot protocol version
    public static let typeOfLoader = 0x210        // u8
    public static let loadFlags = 0x211           // u8
    public static let code32Start = 0x214         // u32
    public static let ramdiskImage = 0x218        // u32
    public static let ramdiskSize = 0x21C         // u32
    public static let heapEndPtr = 0x224          // u16
    public static let cmdLinePtr = 0x228          // u32
    public static let initrdAddrMax = 0x22C       // u32
    public static let cmdlineSize = 0x238         // u32
    public static let e820Table = 0x2D0           // 128 entries of 20 bytes
    public static let e820MaxEntries = 128

    public var bytes: [UInt8]

    public init() { bytes = [UInt8](repeating: 0, count: Self.size) }

    /// Point the kernel at its command line (anywhere in the first 4 GiB... or above, via ext).
    public mutating func setCommandLine(address: UInt64) {
        set(UInt32(truncatingIfNeeded: address), at: Self.cmdLinePtr)
        set(UInt32(truncatingIfNeeded: address >> 32), at: Self.extCmdLinePtr)
    }

    public mutating func setE820(_ map: [E820Entry]) {
        let n = min(map.count, Self.e820MaxEntries)
        set(UInt8(n), at: Self.e820Entries)
        for (i, e) in map.prefix(n).enumerated() {
            let at = Self.e820Table + i * 20
            set(e.address, at: at)
            set(e.size, at: at + 8)
            set(e.type.rawValue, at: at + 16)
        }
    }
}

extension ZeroPage {
    public static let vidMode = 0x1FA             // u16
    public static let kernelVersion = 0x20E       // u16: offset of the version string - 0x200
    public static let kernelAlignment = 0x230     // u32
    public static let relocatableKernel = 0x234   // u8
    public static let xloadflags = 0x236          // u16
    public static let payloadOffset = 0x248       // u32
    public static let payloadLength = 0x24C       // u32
    public static let prefAddress = 0x258         // u64
    public static let initSize = 0x260            // u32
    public static let extRamdiskImage = 0x0C0     // u32: high 32 bits of ramdisk_image
    public static let extRamdiskSize = 0x0C4      // u32: high 32 bits of ramdisk_size

    public mutating func setRamdisk(address: UInt64, size: UInt64) {
        set(UInt32(truncatingIfNeeded: address), at: Self.ramdiskImage)
        set(UInt32(truncatingIfNeeded: size), at: Self.ramdiskSize)
        set(UInt32(truncatingIfNeeded: address >> 32), at: Self.extRamdiskImage)
        set(UInt32(truncatingIfNeeded: size >> 32), at: Self.extRamdiskSize)
    }
}

extension ZeroPage {
    /// boot_params for an ELF kernel, which has no setup header of its own: the fields a
    /// boot loader would have found in one, so Linux takes the initrd and command line
    /// seriously (it ignores the initrd unless type_of_loader is set, for one).
    public static func forELFKernel(commandLineLimit: Int) -> ZeroPage {
        var zp = ZeroPage()
        zp.set(UInt16(0xAA55), at: Self.bootFlag)
        zp.set(UInt32(0x5372_6448), at: Self.headerMagic)       // "HdrS"
        zp.set(UInt16(0x020F), at: Self.version)                 // boot protocol 2.15
        zp.set(UInt8(0xFF), at: Self.typeOfLoader)
        zp.set(UInt8(0x01), at: Self.loadFlags)                  // LOADED_HIGH
        zp.set(UInt16(0xFFFF), at: Self.vidMode)
        zp.set(UInt32(0x0100_0000), at: Self.kernelAlignment)
        zp.set(UInt32(commandLineLimit - 1), at: Self.cmdlineSize)
        return zp
    }
}
