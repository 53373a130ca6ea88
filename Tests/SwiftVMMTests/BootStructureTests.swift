import Foundation
import KernelLoading
import Memory
import Testing
import X86Platform

@Suite("Boot structures")
struct BootStructureTests {
    @Test("e820 carves out the hypercall page and the BIOS area, and keeps high RAM")
    func e820() {
        let map = E820.build(ram: [(0, 64 << 20)], reserved: [0x2000 ..< 0x3000])
        #expect(map == [
            E820Entry(address: 0, size: 0x2000, type: .ram),
            E820Entry(address: 0x2000, size: 0x1000, type: .reserved),
            E820Entry(address: 0x3000, size: 0x9FC00 - 0x3000, type: .ram),
            E820Entry(address: 0x9FC00, size: 0x100000 - 0x9FC00, type: .reserved),
            E820Entry(address: 0x100000, size: (64 << 20) - 0x100000, type: .ram),
        ])
        let big = E820.build(ram: [(0, 3 << 30), (4 << 30, 1 << 30)], reserved: [0x2000 ..< 0x3000])
        #expect(big.last == E820Entry(address: 4 << 30, size: 1 << 30, type: .ram))
        #expect(big[big.count - 2] == E820Entry(address: 0x100000, size: (3 << 30) - 0x100000, type: .ram))
        #expect(map[0].description == "[mem 0x0000000000000000-0x0000000000001fff] usable")
    }

    @Test("boot_params fields sit at the offsets the boot protocol gives")
    func zeroPage() {
        var zp = ZeroPage()
        zp.setCommandLine(address: 0x1_2002_0000)
        #expect(zp.get(UInt32.self, at: 0x228) == 0x2002_0000)
        #expect(zp.get(UInt32.self, at: 0x0C8) == 0x1)
        zp.setE820([E820Entry(address: 0x1000, size: 0x2000, type: .reserved)])
        #expect(zp.bytes[0x1E8] == 1)
        #expect(zp.get(UInt64.self, at: 0x2D0) == 0x1000)
        #expect(zp.get(UInt64.self, at: 0x2D8) == 0x2000)
        #expect(zp.get(UInt32.self, at: 0x2E0) == 2)
    }

    @Test("the identity map covers 4 GiB with 2 MiB pages; the GDT has the boot selectors")
    func longModeTables() throws {
        let m = try GuestMemory(size: 4 << 20)
        try LongMode.writeTables(into: m)
        #expect(m.load(UInt64.self, at: BootLayout.pml4) == BootLayout.pdpt | 3)
        for i in 0..<UInt64(4) {
            #expect(m.load(UInt64.self, at: BootLayout.pdpt + i * 8) == (BootLayout.pageDirectories + i * 0x1000) | 3)
        }
        #expect(m.load(UInt64.self, at: BootLayout.pageDirectories) == 0x83)
        #expect(m.load(UInt64.self, at: BootLayout.pageDirectories + 8) == (2 << 20) | 0x83)
        #expect(m.load(UInt64.self, at: BootLayout.pageDirectories + 3 * 0x1000 + 511 * 8) == ((4 << 30) - (2 << 20)) | 0x83)
        #expect(m.load(UInt64.self, at: BootLayout.gdt + 0x10) == 0x00AF_9B00_0000_FFFF)
        #expect(m.load(UInt64.self, at: BootLayout.gdt + 0x18) == 0x00CF_9300_0000_FFFF)
    }
}

/// The bundled guest's ELF, read with the same libelf-based parser the loader uses.
@Suite("The bundled guest's ELF layout")
struct GuestELFTests {
    func guestBytes() throws -> [UInt8] {
        let exists = FileManager.default.fileExists(atPath: Repo.minimalGuest)
        if !exists { Issue.record("\(Repo.minimalGuest) is missing: run `make -C guests/minimal` first") }
        try #require(exists)
        return Array(try Data(contentsOf: URL(fileURLWithPath: Repo.minimalGuest)))
    }

    @Test("hypercall symbols are bound at 0x2000 + nr * 32")
    func hypercallSymbols() throws {
        let symbols = ELFImage.symbols(try guestBytes())
        let expected: [String: UInt64] = [
            "hypercall_page": 0x2000, "hypercall_noop": 0x2000, "hypercall_console_write": 0x2020,
            "hypercall_exit": 0x2040, "hypercall_time_ns": 0x2060, "hypercall_random": 0x2080,
            "hypercall_version": 0x20A0, "hypercall_checksum": 0x20C0,
        ]
        for (name, value) in expected {
            let found = symbols.first { $0.name == name }
            #expect(found?.value == value, "\(name) is at \(found.map { String($0.value, radix: 16) } ?? "nowhere")")
        }
    }

    @Test("64-bit entry, PVH note, and every segment at or above 1 MiB")
    func layout() throws {
        let bytes = try guestBytes()
        let image = try ELFImage(bytes: bytes, path: Repo.minimalGuest)
        #expect(image.elfClass == .elf64)
        #expect(image.segments.allSatisfy { $0.physicalAddress >= 0x100000 })
        let start64 = ELFImage.symbols(bytes).first { $0.name == "start64" }
        #expect(start64 != nil && image.entry == start64?.value)
        let pvh = ELFImage.symbols(bytes).first { $0.name == "start32_pvh" }
        #expect(image.pvhEntry != nil && image.pvhEntry == pvh?.value)
        // No .note.gnu.build-id: it is what moved a hypercall page before (seed 004).
        #expect(!String(decoding: bytes, as: UTF8.self).contains(".note.gnu.build-id"))
    }

    @Test("parsing rejects ELF files that lie about their size")
    func truncated() throws {
        let bytes = try guestBytes()
        #expect(throws: BootError.self) { try ELFImage(bytes: Array(bytes.prefix(1024)), path: "cut") }
        #expect(throws: BootError.self) { try ELFImage(bytes: Array(bytes.prefix(40)), path: "cut") }
        #expect(throws: BootError.self) { try ELFImage(bytes: [0x7F, 0x45, 0x4C, 0x46], path: "magic only") }
        #expect(throws: BootError.self) { try ELFImage(bytes: Array(repeating: 0, count: 100), path: "zeros") }
    }
}
