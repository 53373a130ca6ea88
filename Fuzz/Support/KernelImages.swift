import Glibc
import KernelLoading
import Memory
import X86Platform

/// What the kernel-image targets share: `inspect` and the loader on one image, into a small
/// guest, with every entry choice and with and without an initrd, and the checks on what a
/// successful load reports.
public enum KernelImageFuzz {
    /// 4 MiB: room for the boot area, a kernel of up to a few MiB and an initrd. Loads that
    /// do not fit are the `doesNotFit` path, also worth running.
    public static let memory = try! GuestMemory(size: 4 << 20)

    /// A small initrd in a file, as the loader reads one from a path; removed at exit.
    public static let initrdPath: String = {
        let path = "/tmp/swiftvmm-fuzz-initrd-\(getpid())"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        let bytes = [UInt8](repeating: 0x42, count: 3000)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress!, $0.count) }
        close(fd)
        atexit { _ = unlink(KernelImageFuzz.initrdPath) }
        return path
    }()

    public static func run(_ bytes: [UInt8], choice: UInt8) {
        let report = KernelInspection.inspect(bytes: bytes, path: "fuzz")
        _ = report.text
        _ = report.json
        fuzzCheck(report.size == bytes.count, "inspect reports \(report.size) bytes of \(bytes.count)")

        let entries: [EntryChoice] = [.auto, .linux64, .linux32, .pvh]
        var options = BootOptions(commandLine: choice & 4 != 0 ? "console=hvc0 quiet" : "",
                                  initrdPath: choice & 8 != 0 ? initrdPath : nil,
                                  entry: entries[Int(choice % 4)], reserved: [0x2000 ..< 0x3000])
        options.acpiRSDP = choice & 16 != 0 ? 0xE0000 : nil
        guard let kernel = try? KernelLoader.load(bytes: bytes, path: "fuzz", into: memory, options: options) else { return }
        check(kernel, options)
    }

    static func check(_ kernel: LoadedKernel, _ options: BootOptions) {
        for (i, r) in kernel.loadedRanges.enumerated() {
            fuzzCheck(memory.contains(r.lowerBound, count: UInt64(r.count)), "loaded range \(r) is not inside guest RAM")
            fuzzCheck(r.lowerBound >= BootLayout.kernelStart, "loaded range \(r) is in the boot area below 1 MiB")
            for other in kernel.loadedRanges[..<i] { fuzzCheck(!r.overlaps(other), "loaded ranges \(other) and \(r) overlap") }
        }
        if let initrd = kernel.initrd {
            fuzzCheck(options.initrdPath != nil, "an initrd placed without one")
            fuzzCheck(memory.contains(initrd.lowerBound, count: UInt64(initrd.count)), "initrd \(initrd) is not inside guest RAM")
            fuzzCheck(initrd.lowerBound % 4096 == 0, "initrd at \(initrd.lowerBound) is not page-aligned")
            for r in kernel.loadedRanges { fuzzCheck(!r.overlaps(initrd), "initrd \(initrd) overlaps the kernel at \(r)") }
        } else {
            fuzzCheck(options.initrdPath == nil, "the initrd was not placed")
        }
        // The entry mode is one the choice allows (auto: any).
        switch kernel.entry {
        case .longMode64: fuzzCheck(options.entry != .linux32 && options.entry != .pvh, "linux64 entry for \(options.entry)")
        case .protected32: fuzzCheck(options.entry != .linux64 && options.entry != .pvh, "linux32 entry for \(options.entry)")
        case .pvh: fuzzCheck(options.entry == .pvh || options.entry == .auto, "pvh entry for \(options.entry)")
        }
        fuzzCheck(!kernel.e820.isEmpty, "an empty e820 map")
    }
}

/// ELF images built from field values, so a target can mutate program headers directly
/// rather than hoping byte flips keep libelf's checks happy.
public enum ELFWriter {
    public struct Segment {
        public var type: UInt32 = 1                 // PT_LOAD
        public var flags: UInt32 = 5                // R-X
        public var virtualAddress: UInt64
        public var physicalAddress: UInt64
        public var contents: [UInt8]
        public var memorySize: UInt64
        public init(type: UInt32 = 1, flags: UInt32 = 5, virtualAddress: UInt64, physicalAddress: UInt64,
                    contents: [UInt8], memorySize: UInt64) {
            self.type = type
            self.flags = flags
            self.virtualAddress = virtualAddress
            self.physicalAddress = physicalAddress
            self.contents = contents
            self.memorySize = memorySize
        }
    }

    /// A little-endian ELF executable (64-bit x86-64 or 32-bit i386) with these segments, their
    /// contents after the headers in order.
    public static func image(elf64: Bool, entry: UInt64, segments: [Segment]) -> [UInt8] {
        var out: [UInt8] = []
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        let ehSize = elf64 ? 64 : 52, phSize = elf64 ? 56 : 32
        var offset = UInt64(ehSize + phSize * segments.count)
        out += [0x7F, 0x45, 0x4C, 0x46, elf64 ? 2 : 1, 1, 1, 0] + [UInt8](repeating: 0, count: 8)
        put(UInt16(2))                                           // ET_EXEC
        put(UInt16(elf64 ? 62 : 3))                              // EM_X86_64, EM_386
        put(UInt32(1))
        if elf64 { put(entry); put(UInt64(ehSize)); put(UInt64(0)) }
        else { put(UInt32(truncatingIfNeeded: entry)); put(UInt32(ehSize)); put(UInt32(0)) }
        put(UInt32(0))                                           // e_flags
        put(UInt16(ehSize)); put(UInt16(phSize)); put(UInt16(segments.count))
        put(UInt16(elf64 ? 64 : 40)); put(UInt16(0)); put(UInt16(0))
        for s in segments {
            let size = UInt64(s.contents.count)
            if elf64 {
                put(s.type); put(s.flags); put(offset); put(s.virtualAddress); put(s.physicalAddress)
                put(size); put(s.memorySize); put(UInt64(0x1000))
            } else {
                put(s.type); put(UInt32(offset)); put(UInt32(truncatingIfNeeded: s.virtualAddress))
                put(UInt32(truncatingIfNeeded: s.physicalAddress)); put(UInt32(size))
                put(UInt32(truncatingIfNeeded: s.memorySize)); put(s.flags); put(UInt32(0x1000))
            }
            offset += size
        }
        for s in segments { out += s.contents }
        return out
    }
}
