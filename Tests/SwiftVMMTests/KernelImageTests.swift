import Foundation
import KernelLoading
import Memory
import Testing

@Suite("Kernel images: page offset, inspect, bad images")
struct KernelImageTests {
    @Test("64-bit page offset from a real Debian vmlinux agrees with its program headers")
    func pageOffset64() throws {
        let bytes = try DebianKernel.bytes("cloud", "vmlinux")
        let image = try ELFImage(bytes: bytes, path: "vmlinux")
        let found = try PageOffset.intuit(image: image, bytes: bytes)
        #expect(found.pageOffset == 0xFFFF_FFFF_8000_0000)
        #expect(found.votes * 2 > found.totalVotes)
        for s in image.segments where s.virtualAddress >= found.pageOffset {
            #expect(s.virtualAddress - found.pageOffset == s.physicalAddress)
        }
    }

    @Test("32-bit page offset from lguest's movl vote, on a 32-bit ELF built here")
    func pageOffset32() throws {
        let path = try build32BitKernel()
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        let image = try ELFImage(bytes: bytes, path: path)
        #expect(image.elfClass == .elf32)
        #expect(PageOffset.physicalAddressesUnusable(image))
        let found = try PageOffset.intuit(image: image, bytes: bytes)
        #expect(found.pageOffset == 0xC000_0000 && found.method == "movl-eax" && found.votes == 4)
    }

    @Test("the page-offset heuristics fail clearly instead of guessing")
    func pageOffsetFailures() throws {
        #expect(throws: PageOffset.Failure.noEvidence(method: "movl <addr>,%eax")) {
            try PageOffset.intuit32([ArraySlice([UInt8](repeating: 0x90, count: 4096))])
        }
        // Votes that never agree four times: ambiguous.
        var scattered: [UInt8] = []
        for top in 1...50 { scattered += [0xA1, 0, 0, 0, UInt8(top)] }
        #expect(throws: PageOffset.Failure.self) { try PageOffset.intuit32([ArraySlice(scattered)]) }
        // A top byte of zero is a user address and never wins.
        let zeros = [UInt8](repeating: 0xA1, count: 1) + [UInt8](repeating: 0, count: 64)
        #expect(throws: PageOffset.Failure.self) { try PageOffset.intuit32([ArraySlice(zeros)]) }
        // Random bytes: no 64-bit base dominates with enough votes.
        var rng = SeededRandom(seed: 7)
        let noise = (0..<(1 << 16)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        #expect(throws: PageOffset.Failure.self) { try PageOffset.intuit64([ArraySlice(noise)]) }
        // The bundled guest's code names no kernel-half addresses: no answer.
        let minimal = Array(try Data(contentsOf: URL(fileURLWithPath: Repo.minimalGuest)))
        let image = try ELFImage(bytes: minimal, path: "minimal.elf")
        #expect(throws: PageOffset.Failure.self) { try PageOffset.intuit(image: image, bytes: minimal) }
        // A 32-bit kernel with unusable physical addresses and no evidence cannot be loaded.
        let k = try build32BitKernel(noEvidence: true)
        let m = try GuestMemory(size: 16 << 20)
        #expect(throws: BootError.self) { try KernelLoader.load(path: k, into: m, options: BootOptions(commandLine: "")) }
    }

    @Test("inspect: what the loaders see in the Debian bzImage, vmlinux, and the bundled guest")
    func inspect() throws {
        let z = KernelInspection.inspect(bytes: try DebianKernel.bytes("cloud", "vmlinuz"), path: "vmlinuz")
        #expect(z.format == "bzImage" && z.bootProtocol == "2.15" && z.problem == nil)
        #expect(z.compression != nil && z.compression != "unknown")
        #expect(z.entry64 == 0x1000200 && z.entry32 == 0x1000000 && z.loadAddress == 0x1000000)
        #expect(z.kernelVersion?.hasPrefix("6.") == true)
        #expect(z.json.contains("\"format\": \"bzImage\"") && z.json.contains("\"entry64\": \"0x1000200\""))
        let x = KernelInspection.inspect(bytes: try DebianKernel.bytes("cloud", "vmlinux"), path: "vmlinux")
        #expect(x.format == "ELF64" && x.entryPVH == 0x1000850 && x.entry64 == 0x1000000)
        #expect(x.kernelVersion?.hasPrefix("Linux version 6.") == true)
        #expect(x.pageOffset == 0xFFFF_FFFF_8000_0000 && x.physicalAddressesUsable == true)
        #expect(x.segments.contains { $0.virtualAddress == 0xFFFF_FFFF_8100_0000 && $0.physicalAddress == 0x100_0000 })
        #expect(x.text.contains("0xffffffff81000000 -> 0x0000000001000000"))
        let junk = KernelInspection.inspect(bytes: Array("hello".utf8), path: "junk")
        #expect(junk.format == "unknown" && junk.problem != nil)
    }

    @Test("swiftvmm inspect prints text and JSON and exits 0, or 65 for a non-kernel")
    func inspectCommand() throws {
        try requireKVMAndGuest()
        let vmlinuz = try DebianKernel.path("cloud", "vmlinuz")
        let text = try runVMM(["inspect", vmlinuz])
        #expect(text.status == 0)
        #expect(text.stdout.contains("format:             bzImage") && text.stdout.contains("boot protocol:      2.15"))
        let json = try runVMM(["inspect", "--json", vmlinuz])
        #expect(json.status == 0)
        let object = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        #expect(object?["format"] as? String == "bzImage")
        #expect(object?["entry64"] as? String == "0x1000200")
        let bad = try runVMM(["inspect", "/etc/hostname"])
        #expect(bad.status == 65)
        let missing = try runVMM(["inspect", "/nonexistent/kernel"])
        #expect(missing.status == 66)
    }

    @Test("bad images get one clear line and a documented exit code")
    func badImages() throws {
        try requireKVMAndGuest()
        let vmlinuz = try DebianKernel.bytes("cloud", "vmlinuz")
        let dir = FileManager.default.temporaryDirectory
        func file(_ name: String, _ bytes: [UInt8]) throws -> String {
            let u = dir.appendingPathComponent("swiftvmm-bad-\(getpid())-\(name)")
            try Data(bytes).write(to: u)
            return u.path
        }
        var old = vmlinuz
        old[0x206] = 0x05                                          // protocol 2.05
        let cases: [(String, [String], Int32, String)] = [
            ("truncated bzImage", ["64m", try file("trunc", Array(vmlinuz.prefix(0x400)))], 65, "truncated"),
            ("old protocol", ["64m", try file("old", Array(old.prefix(200_000)))], 65, "boot protocol 2.05 is older than 2.06"),
            ("wrong magic", ["64m", try file("magic", [UInt8](repeating: 0x55, count: 4096))], 65, "not a kernel image"),
            ("kernel beyond RAM", ["16m", try DebianKernel.path("cloud", "vmlinuz")], 65, "guest has 16 MiB"),
            ("ELF beyond RAM", ["16m", try DebianKernel.path("cloud", "vmlinux")], 65, "does not fit"),
            ("initrd larger than RAM", ["128m", try DebianKernel.path("cloud", "vmlinuz"), "--initrd", try makeSparseFile(size: 140 << 20)], 65, "larger than the 128 MiB"),
            ("initrd missing", ["128m", try DebianKernel.path("cloud", "vmlinuz"), "--initrd", "/nonexistent/initrd"], 66, "No such file"),
            ("command line too long", ["128m", try DebianKernel.path("cloud", "vmlinuz"), String(repeating: "x", count: 3000)], 64, "at most 2047"),
            ("pvh on a bzImage", ["--entry=pvh", "128m", try DebianKernel.path("cloud", "vmlinuz")], 65, "PVH"),
            ("linux32 on an ELF64", ["--entry=linux32", "32m", Repo.minimalGuest], 65, "no 32-bit entry"),
            ("unknown entry", ["--entry=bios", "32m", Repo.minimalGuest], 64, "--entry"),
        ]
        for (name, args, code, message) in cases {
            let r = try runVMM(args)
            #expect(r.status == code, "\(name): exit \(r.status), stderr \(r.stderr)")
            #expect(r.stderr.contains(message), "\(name): \(r.stderr)")
            #expect(r.stdout.isEmpty, "\(name): no guest ran")
        }
    }
}

/// A small deterministic generator (SplitMix64), so every run mutates the same way.
struct SeededRandom: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Mutation testing of the parsers on real headers: flipped bytes, overwritten fields with
/// boundary values, truncations. The parsers must answer with a value or a BootError, never
/// crash, and what they accept must be self-consistent (every range they report lies inside
/// the file, and a load either fits in guest RAM or is refused).
@Suite("Parser mutation tests")
struct ParserMutationTests {
    static let interesting: [UInt64] = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF, 0x100000, 0x1000]

    static func mutate(_ seed: [UInt8], hot: Range<Int>, rng: inout SeededRandom) -> [UInt8] {
        var b = seed
        for _ in 0..<Int.random(in: 1...6, using: &rng) {
            switch Int.random(in: 0..<4, using: &rng) {
            case 0:
                let i = Int.random(in: hot, using: &rng)
                b[i] ^= UInt8(1) << UInt8.random(in: 0..<8, using: &rng)
            case 1:
                let i = Int.random(in: hot, using: &rng)
                b[i] = UInt8.random(in: 0...255, using: &rng)
            case 2:
                let i = Int.random(in: hot, using: &rng) & ~3
                let v = interesting.randomElement(using: &rng)!
                for k in 0..<min(8, b.count - i) { b[i + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(k))) }
            default:
                b.removeLast(Int.random(in: 0...(b.count / 2), using: &rng))
                if b.count <= hot.lowerBound + 1 { return b }
            }
            if b.count < hot.upperBound { return b }
        }
        return b
    }

    @Test("ELF headers of the bundled guest and of a 32-bit kernel, mutated")
    func elf() throws {
        let seeds = [Array(try Data(contentsOf: URL(fileURLWithPath: Repo.minimalGuest))),
                     Array(try Data(contentsOf: URL(fileURLWithPath: try build32BitKernel())))]
        var rng = SeededRandom(seed: 0x5EED_E1F)
        var accepted = 0
        for seed in seeds {
            for _ in 0..<1500 {
                let b = Self.mutate(seed, hot: 0..<min(seed.count, 0x200), rng: &rng)
                guard let image = try? ELFImage(bytes: b, path: "m") else { continue }
                accepted += 1
                for s in image.segments {
                    #expect(s.fileOffset + s.fileSize <= UInt64(b.count) && s.fileSize <= s.memorySize)
                }
                _ = try? PageOffset.intuit(image: image, bytes: b)
                _ = KernelInspection.inspect(bytes: b, path: "m")
            }
        }
        #expect(accepted > 0, "some mutants should still parse")
    }

    @Test("the Debian bzImage's setup header, mutated, then loaded into a small guest")
    func bzImage() throws {
        let seed = Array(try DebianKernel.bytes("cloud", "vmlinuz").prefix(64 << 10))
        var rng = SeededRandom(seed: 0xB2_1A6E)
        let memory = try GuestMemory(size: 32 << 20)
        let dir = FileManager.default.temporaryDirectory
        var accepted = 0
        for i in 0..<1500 {
            let b = Self.mutate(seed, hot: 0x1F0..<0x270, rng: &rng)
            guard let image = try? BzImage(bytes: b, path: "m") else { continue }
            accepted += 1
            #expect(UInt64(image.payloadOffset) + UInt64(image.payloadLength) <= UInt64(image.protectedMode.count))
            _ = KernelInspection.inspect(bytes: b, path: "m")
            if i % 50 == 0 {
                // Through the whole loader (from a file): fits and is written, or is refused.
                let u = dir.appendingPathComponent("swiftvmm-mut-\(getpid())")
                try Data(b).write(to: u)
                if let k = try? KernelLoader.load(path: u.path, into: memory, options: BootOptions(commandLine: "x")) {
                    for r in k.loadedRanges { #expect(memory.contains(r.lowerBound, count: UInt64(r.count))) }
                }
            }
        }
        #expect(accepted > 0)
    }

    @Test("page-offset votes over mutated real code never crash and never pick a user-half base")
    func pageOffset() throws {
        let code = Array(try DebianKernel.bytes("cloud", "vmlinux")[0x200000 ..< 0x280000])
        var rng = SeededRandom(seed: 0x0FF5E7)
        for _ in 0..<40 {
            let b = Self.mutate(code, hot: 0..<code.count, rng: &rng)
            if let r = try? PageOffset.intuit64([ArraySlice(b)]) { #expect(r.pageOffset >> 63 == 1) }
            if let r = try? PageOffset.intuit32([ArraySlice(b)]) { #expect(r.pageOffset != 0) }
        }
    }
}
