// KernelLoading: a kernel image into guest RAM, with everything it reads at its entry. One
// file per format and boot-protocol structure: ELFImage (a vmlinux, the bundled guest, and
// old 32-bit kernels through lguest's page-offset heuristic in PageOffset), BzImage (Linux's
// x86 boot protocol), Initrd, ZeroPage (boot_params) and PVHStartInfo. KernelLoader picks the
// format and the entry and checks everything before it writes anything; the addresses come
// from X86Platform's layout. What was loaded comes back as a LoadedKernel, whose EntryMode
// the machine turns into the boot CPU's state. KernelInspection is `swiftvmm inspect`: the
// same parsers, nothing booted.

import HostSupport
import Memory
import X86Platform

/// How the boot CPU enters the kernel.
public enum EntryMode: Sendable, Equatable {
    /// 64-bit long mode with paging on, RIP = entry, RSI = boot_params (Linux's 64-bit boot
    /// protocol; also the bundled guest's `start64`).
    case longMode64(entry: UInt64, bootParams: UInt64)
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info` (the entry comes from
    /// the ELF note XEN_ELFNOTE_PHYS32_ENTRY).
    case pvh(entry: UInt64, startInfo: UInt64)
    /// Linux's 32-bit boot protocol: 32-bit protected mode, paging off, ESI = boot_params.
    /// Also how 32-bit ELF kernels are entered.
    case protected32(entry: UInt64, bootParams: UInt64)

    public var name: String {
        switch self {
        case .longMode64: return "linux64"
        case .pvh: return "pvh"
        case .protected32: return "linux32"
        }
    }
}

/// Which entry the user asked for (`--entry`).
public enum EntryChoice: String, Sendable, CaseIterable {
    /// PVH when the ELF has the note, else the image's own best: 64-bit, or 32-bit.
    case auto
    case pvh
    case linux64
    case linux32
}

/// What the loader needs besides the kernel itself.
public struct BootOptions: Sendable {
    public var commandLine: String
    public var initrdPath: String?
    /// An initrd built in memory (`swiftvmm exec`'s), used when there is no `initrdPath`.
    public var initrdData: [UInt8]?
    public var entry: EntryChoice = .auto
    /// Guest-physical ranges that are the VMM's (the hypercall page): reserved in the map.
    public var reserved: [Range<UInt64>] = []
    /// Add `console=ttyS0` to a Linux kernel's command line when it names no console, so
    /// its output reaches the serial port (the only console swiftvmm has).
    public var addSerialConsole = true
    /// Where the machine puts the ACPI RSDP, if it writes ACPI tables: passed to the kernel in
    /// boot_params.acpi_rsdp_addr and hvm_start_info.rsdp_paddr.
    public var acpiRSDP: UInt64?

    public init(commandLine: String, initrdPath: String? = nil, initrdData: [UInt8]? = nil, entry: EntryChoice = .auto,
                reserved: [Range<UInt64>] = [], addSerialConsole: Bool = true, acpiRSDP: UInt64? = nil) {
        self.commandLine = commandLine
        self.initrdPath = initrdPath
        self.initrdData = initrdData
        self.entry = entry
        self.reserved = reserved
        self.addSerialConsole = addSerialConsole
        self.acpiRSDP = acpiRSDP
    }

    /// The command line a kernel gets: the user's words, plus `console=ttyS0` for Linux
    /// kernels when the user named no console and did not turn this off.
    public func effectiveCommandLine(isLinux: Bool) -> String {
        guard addSerialConsole, isLinux else { return commandLine }
        let words = commandLine.split(separator: " ")
        if words.contains(where: { $0.hasPrefix("console=") }) { return commandLine }
        return commandLine.isEmpty ? "console=ttyS0" : commandLine + " console=ttyS0"
    }
}

/// What the loader did: where the kernel is and how to start it.
public struct LoadedKernel: Sendable {
    public let format: String
    public let entry: EntryMode
    /// Guest-physical ranges the kernel's segments occupy.
    public let loadedRanges: [Range<UInt64>]
    public let commandLine: String
    /// Where the initrd went, if there is one.
    public let initrd: Range<UInt64>?
    /// The memory map the kernel was given.
    public let e820: [E820Entry]
}

/// Puts a kernel image into guest memory with everything it needs to start: its segments,
/// the command line, the initrd, boot_params (or PVH start info) with the e820 map, and the
/// page tables for the entry.
///
/// Everything is checked before anything is written, so a bad image or initrd leaves no
/// half-loaded machine behind.
public enum KernelLoader {
    /// Linux's COMMAND_LINE_SIZE on x86 for ELF kernels, which carry no setup header to say.
    public static let defaultCommandLineLimit = 2048

    public static func load(path: String, into memory: GuestMemory, options: BootOptions) throws(BootError) -> LoadedKernel {
        try load(bytes: try readFile(path), path: path, into: memory, options: options)
    }

    /// The same for a kernel already read (`path` names it in errors): the fuzz targets load
    /// thousands of images a second without a file for each.
    public static func load(bytes: [UInt8], path: String, into memory: GuestMemory, options: BootOptions) throws(BootError) -> LoadedKernel {
        guard !bytes.isEmpty else { throw .notAKernel(path: path, reason: "the file is empty") }
        let initrd = try options.initrdPath.map { p throws(BootError) in try readFile(p) } ?? options.initrdData
        if let initrd, let p = options.initrdPath, initrd.isEmpty {
            throw .unsupported(path: p, reason: "the initrd is empty")
        }
        var options = options
        if ELFImage.isELF(bytes) {
            let image = try ELFImage(bytes: bytes, path: path)
            options.commandLine = options.effectiveCommandLine(isLinux: ELFImage.linuxVersion(in: bytes) != nil)
            return try loadELF(image, bytes: bytes, into: memory, options: options, initrd: initrd)
        }
        if BzImage.isBzImage(bytes) {
            let image = try BzImage(bytes: bytes, path: path)
            options.commandLine = options.effectiveCommandLine(isLinux: true)
            return try image.load(into: memory, options: options, initrd: initrd)
        }
        throw .notAKernel(path: path, reason: "neither an ELF file nor a bzImage (no ELF magic, no 'HdrS' setup header)")
    }

    static func loadELF(_ image: ELFImage, bytes: [UInt8], into memory: GuestMemory, options: BootOptions,
                        initrd: [UInt8]?) throws(BootError) -> LoadedKernel {
        let path = image.path
        // Where each segment goes. Normally its physical address; when those are unusable
        // (0, or the kernel-space virtual addresses themselves), the page offset the image's
        // code reveals turns virtual into physical, as lguest did.
        var placement = image.segments.map { $0.physicalAddress }
        var entryPhysical: UInt64? = nil
        if PageOffset.physicalAddressesUnusable(image) {
            do {
                let found = try PageOffset.intuit(image: image, bytes: bytes)
                placement = try PageOffset.placement(image, pageOffset: found.pageOffset)
                entryPhysical = image.entry >= found.pageOffset ? image.entry - found.pageOffset : image.entry
            } catch {
                throw .unsupported(path: path, reason: "its physical addresses are unusable and \(error.description)")
            }
        }

        // Check every segment before writing any.
        var ranges: [Range<UInt64>] = []
        for (i, seg) in image.segments.enumerated() {
            let at = placement[i]
            let (end, overflow) = at.addingReportingOverflow(seg.memorySize)
            guard !overflow else {
                throw .doesNotFit(path: path, reason: "segment \(i) at \(Diagnostics.hex(at)) wraps around the address space")
            }
            guard at >= BootLayout.kernelStart else {
                throw .doesNotFit(path: path, reason: "segment \(i) at \(Diagnostics.hex(at)) overlaps swiftvmm's boot area below 1 MiB")
            }
            guard memory.contains(at, count: seg.memorySize) else {
                throw .doesNotFit(path: path, reason: "segment \(i) (\(Diagnostics.hex(at))-\(Diagnostics.hex(end - 1))) does not fit in \(MemorySize.format(memory.size)) of guest RAM")
            }
            let r = at ..< end
            if let other = ranges.firstIndex(where: { $0.overlaps(r) }) {
                throw .notAKernel(path: path, reason: "segments \(other) and \(i) overlap")
            }
            ranges.append(r)
        }

        // The ELF entry is a virtual address in principle; the CPU starts with an identity
        // map (or paging off), so turn it into the physical address of the same byte.
        var entry = entryPhysical ?? image.entry
        if entryPhysical == nil,
           let i = image.segments.firstIndex(where: { image.entry >= $0.virtualAddress && image.entry - $0.virtualAddress < $0.memorySize }) {
            entry = image.entry - image.segments[i].virtualAddress + placement[i]
        }

        let mode: EntryMode
        let limit = defaultCommandLineLimit
        switch (options.entry, image.elfClass) {
        case (.auto, .elf64), (.auto, .elf32):
            if let pvh = image.pvhEntry {
                mode = .pvh(entry: pvh, startInfo: BootLayout.pvhStartInfo)
            } else if image.elfClass == .elf64 {
                mode = .longMode64(entry: entry, bootParams: BootLayout.zeroPage)
            } else {
                mode = .protected32(entry: entry, bootParams: BootLayout.zeroPage)
            }
        case (.pvh, _):
            guard let pvh = image.pvhEntry else {
                throw .unsupported(path: path, reason: "--entry=pvh, but the image has no PVH note (XEN_ELFNOTE_PHYS32_ENTRY)")
            }
            mode = .pvh(entry: pvh, startInfo: BootLayout.pvhStartInfo)
        case (.linux64, .elf64):
            mode = .longMode64(entry: entry, bootParams: BootLayout.zeroPage)
        case (.linux64, .elf32):
            throw .unsupported(path: path, reason: "--entry=linux64, but this is a 32-bit ELF kernel")
        case (.linux32, .elf32):
            mode = .protected32(entry: entry, bootParams: BootLayout.zeroPage)
        case (.linux32, .elf64):
            throw .unsupported(path: path, reason: "--entry=linux32, but a 64-bit ELF kernel has no 32-bit entry (use pvh or linux64)")
        }

        let kernelEnd = ranges.map(\.upperBound).max() ?? BootLayout.kernelStart
        let initrdRange = try initrd.map { bytes throws(BootError) in
            try Initrd.place(size: UInt64(bytes.count), memory: memory, above: kernelEnd,
                             maxAddress: Initrd.defaultAddressMax, path: options.initrdPath ?? "initrd")
        }
        let line = try checkCommandLine(options.commandLine, limit: limit)

        // Everything checked: write.
        for (i, seg) in image.segments.enumerated() {
            let p = memory.pointer(placement[i], count: seg.memorySize)!
            bytes.withUnsafeBytes { src in
                p.copyMemory(from: src.baseAddress! + Int(seg.fileOffset), byteCount: Int(seg.fileSize))
            }
            (p + Int(seg.fileSize)).initializeMemory(as: UInt8.self, repeating: 0, count: Int(seg.memorySize - seg.fileSize))
        }
        if let initrd, let r = initrdRange { try writeChecked(initrd, at: r.lowerBound, memory) }
        let map = e820(memory: memory, reserved: options.reserved)
        var zp = ZeroPage.forELFKernel(commandLineLimit: limit)
        if let r = initrdRange { zp.setRamdisk(address: r.lowerBound, size: UInt64(r.count)) }
        try writeBootData(into: memory, line: line, map: map, zeroPage: zp, acpiRSDP: options.acpiRSDP)
        if case .pvh = mode {
            try writeChecked(PVHStartInfo.build(at: BootLayout.pvhStartInfo, commandLine: BootLayout.commandLine,
                                                e820: map, initrd: initrdRange, rsdp: options.acpiRSDP).bytes,
                             at: BootLayout.pvhStartInfo, memory)
        }
        return LoadedKernel(format: image.elfClass == .elf64 ? "ELF64" : "ELF32", entry: mode,
                            loadedRanges: ranges, commandLine: options.commandLine, initrd: initrdRange, e820: map)
    }

    /// The command line as the kernel will read it (NUL-terminated), or the error when it is
    /// longer than the kernel accepts.
    static func checkCommandLine(_ commandLine: String, limit: Int) throws(BootError) -> [UInt8] {
        let line = Array(commandLine.utf8) + [0]
        let maximum = min(limit, BootLayout.commandLineCapacity)
        guard line.count <= maximum else {
            throw .commandLineTooLong(length: line.count - 1, maximum: maximum)
        }
        return line
    }

    /// The memory map a Linux guest gets: every RAM region, with the VMM's pages and the
    /// EBDA/BIOS area cut out as reserved.
    public static func e820(memory: GuestMemory, reserved: [Range<UInt64>]) -> [E820Entry] {
        E820.build(ram: memory.regions.map { ($0.guestAddress, $0.size) }, reserved: reserved)
    }

    /// Command line, boot_params (with the e820 map and the ACPI RSDP) and page tables.
    static func writeBootData(into memory: GuestMemory, line: [UInt8], map: [E820Entry], zeroPage: ZeroPage,
                              acpiRSDP: UInt64?) throws(BootError) {
        var zp = zeroPage
        zp.setCommandLine(address: BootLayout.commandLine)
        zp.setE820(map)
        if let acpiRSDP { zp.set(acpiRSDP, at: ZeroPage.acpiRSDPAddr) }
        try writeChecked(line, at: BootLayout.commandLine, memory)
        try writeChecked(zp.bytes, at: BootLayout.zeroPage, memory)
        do {
            try LongMode.writeTables(into: memory)
        } catch {
            throw .doesNotFit(path: "boot data", reason: error.description)
        }
    }

    static func writeChecked(_ bytes: [UInt8], at address: UInt64, _ memory: GuestMemory) throws(BootError) {
        do {
            try memory.write(bytes, at: address)
        } catch {
            // Only reachable with less RAM than MemorySize.minimum allows, or a checked
            // placement gone wrong: a clear error either way, never a write out of bounds.
            throw .doesNotFit(path: "boot data", reason: error.description)
        }
    }
}

