import Memory

/// How the boot CPU enters the kernel.
public enum EntryMode: Sendable, Equatable {
    /// 64-bit long mode with paging on, RIP = entry, RSI = boot_params (Linux's 64-bit boot
    /// protocol; also the bundled guest's `start64`).
    case longMode64(entry: UInt64, bootParams: UInt64)
}

/// What the loader did: where the kernel is and how to start it.
public struct LoadedKernel: Sendable {
    public let format: String
    public let entry: EntryMode
    /// Guest-physical ranges the kernel's segments occupy.
    public let loadedRanges: [Range<UInt64>]
    public let commandLine: String
}

/// Puts a kernel image into guest memory with everything it needs to start: its segments,
/// the command line, boot_params with the e820 map, and the page tables for the entry.
public enum KernelLoader {
    /// Linux's COMMAND_LINE_SIZE on x86 for ELF kernels, which carry no setup header to say.
    public static let defaultCommandLineLimit = 2048

    public static func load(path: String, into memory: GuestMemory, commandLine: String,
                            reserved: [Range<UInt64>]) throws(BootError) -> LoadedKernel {
        let bytes = try readFile(path)
        guard !bytes.isEmpty else { throw .notAKernel(path: path, reason: "the file is empty") }
        if ELFImage.isELF(bytes) {
            let image = try ELFImage(bytes: bytes, path: path)
            return try loadELF(image, bytes: bytes, into: memory, commandLine: commandLine, reserved: reserved)
        }
        if bytes.count > 0x206, Array(bytes[0x202..<0x206]) == Array("HdrS".utf8) {
            throw .unsupported(path: path, reason: "bzImage kernels are not supported yet; use the ELF vmlinux")
        }
        throw .notAKernel(path: path, reason: "neither an ELF file nor a bzImage (no ELF magic, no 'HdrS' setup header)")
    }

    static func loadELF(_ image: ELFImage, bytes: [UInt8], into memory: GuestMemory, commandLine: String,
                        reserved: [Range<UInt64>]) throws(BootError) -> LoadedKernel {
        let path = image.path
        guard image.elfClass == .elf64 else {
            throw .unsupported(path: path, reason: "32-bit ELF kernels are not supported yet")
        }
        // Check every segment before writing any, so a bad image leaves nothing half-loaded.
        var ranges: [Range<UInt64>] = []
        for (i, seg) in image.segments.enumerated() {
            let (end, overflow) = seg.physicalAddress.addingReportingOverflow(seg.memorySize)
            guard !overflow else {
                throw .doesNotFit(path: path, reason: "segment \(i) at 0x\(String(seg.physicalAddress, radix: 16)) wraps around the address space")
            }
            guard seg.physicalAddress >= BootLayout.kernelStart else {
                throw .doesNotFit(path: path, reason: "segment \(i) at 0x\(String(seg.physicalAddress, radix: 16)) overlaps swiftvmm's boot area below 1 MiB")
            }
            guard memory.contains(seg.physicalAddress, count: seg.memorySize) else {
                throw .doesNotFit(path: path, reason: "segment \(i) (0x\(String(seg.physicalAddress, radix: 16))-0x\(String(end - 1, radix: 16))) does not fit in \(MemorySize.format(memory.size)) of guest RAM")
            }
            let r = seg.physicalAddress ..< end
            if let other = ranges.firstIndex(where: { $0.overlaps(r) }) {
                throw .notAKernel(path: path, reason: "segments \(other) and \(i) overlap")
            }
            ranges.append(r)
        }
        for seg in image.segments {
            let p = memory.pointer(seg.physicalAddress, count: seg.memorySize)!
            bytes.withUnsafeBytes { src in
                p.copyMemory(from: src.baseAddress! + Int(seg.fileOffset), byteCount: Int(seg.fileSize))
            }
            (p + Int(seg.fileSize)).initializeMemory(as: UInt8.self, repeating: 0, count: Int(seg.memorySize - seg.fileSize))
        }
        // The ELF entry is a virtual address; the CPU starts with an identity map, so turn it
        // into the physical address of the same byte.
        var entry = image.entry
        if let seg = image.segments.first(where: { image.entry >= $0.virtualAddress && image.entry - $0.virtualAddress < $0.memorySize }) {
            entry = image.entry - seg.virtualAddress + seg.physicalAddress
        }
        try writeBootData(into: memory, commandLine: commandLine, limit: defaultCommandLineLimit, reserved: reserved, zeroPage: ZeroPage())
        return LoadedKernel(format: "ELF64", entry: .longMode64(entry: entry, bootParams: BootLayout.zeroPage),
                            loadedRanges: ranges, commandLine: commandLine)
    }

    /// Command line, boot_params (with the e820 map) and page tables.
    static func writeBootData(into memory: GuestMemory, commandLine: String, limit: Int,
                              reserved: [Range<UInt64>], zeroPage: ZeroPage) throws(BootError) {
        let line = Array(commandLine.utf8) + [0]
        guard line.count <= min(limit, BootLayout.commandLineCapacity) else {
            throw .commandLineTooLong(length: line.count - 1, maximum: min(limit, BootLayout.commandLineCapacity))
        }
        var zp = zeroPage
        zp.setCommandLine(address: BootLayout.commandLine)
        zp.setE820(E820.build(ram: memory.regions.map { ($0.guestAddress, $0.size) }, reserved: reserved))
        do {
            try memory.write(line, at: BootLayout.commandLine)
            try memory.write(zp.bytes, at: BootLayout.zeroPage)
            try LongMode.writeTables(into: memory)
        } catch {
            // Only reachable with less RAM than MemorySize.minimum allows.
            throw .doesNotFit(path: "boot data", reason: error.description)
        }
    }
}
