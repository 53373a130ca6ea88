import Glibc
import Memory
import Testing

@Suite("Memory sizes")
struct MemorySizeTests {
    static let valid: [(String, UInt64)] = [
        ("64m", 64 << 20), ("64M", 64 << 20), ("1g", 1 << 30), ("2G", 2 << 30), ("2048k", 2 << 20),
        ("4096k", 4 << 20), ("32", 32 << 20), ("3mib", 3 << 20), ("1gb", 1 << 30), ("1t", 1 << 40),
    ]

    @Test("sizes as users write them", arguments: valid)
    func parses(text: String, bytes: UInt64) throws {
        #expect(try MemorySize(parsing: text).bytes == bytes)
    }

    @Test("sizes that are rejected, each with its reason")
    func rejects() {
        #expect(throws: MemorySize.ParseError.zero) { try MemorySize(parsing: "0") }
        #expect(throws: MemorySize.ParseError.zero) { try MemorySize(parsing: "0m") }
        #expect(throws: MemorySize.ParseError.empty) { try MemorySize(parsing: "") }
        #expect(throws: MemorySize.ParseError.malformed("abc")) { try MemorySize(parsing: "abc") }
        #expect(throws: MemorySize.ParseError.malformed("64x")) { try MemorySize(parsing: "64x") }
        #expect(throws: MemorySize.ParseError.malformed("-5m")) { try MemorySize(parsing: "-5m") }
        #expect(throws: MemorySize.ParseError.malformed("1.5g")) { try MemorySize(parsing: "1.5g") }
        #expect(throws: MemorySize.ParseError.notPageAligned("6k", bytes: 6144)) { try MemorySize(parsing: "6k") }
        #expect(throws: MemorySize.ParseError.tooSmall("1m", bytes: 1 << 20)) { try MemorySize(parsing: "1m") }
        #expect(throws: MemorySize.ParseError.overflow("99999999999t")) { try MemorySize(parsing: "99999999999t") }
    }

    @Test("sizes read back the way users write them")
    func formats() {
        #expect(MemorySize.format(64 << 20) == "64 MiB")
        #expect(MemorySize.format(3 << 29) == "1.5 GiB")
        #expect(MemorySize.format(4096) == "4 KiB")
        #expect(MemorySize.format(100) == "100 bytes")
    }
}

@Suite("Guest memory translation")
struct GuestMemoryTests {
    @Test("every range is checked against RAM, with no overflow")
    func bounds() throws {
        let size: UInt64 = 4 << 20
        let m = try GuestMemory(size: size)
        #expect(m.pointer(0, count: size) != nil)
        #expect(m.pointer(size - 1, count: 1) != nil)
        #expect(m.pointer(size, count: 0) != nil)          // an empty buffer at the very end
        #expect(m.pointer(size, count: 1) == nil)
        #expect(m.pointer(size - 1, count: 2) == nil)
        #expect(m.pointer(0, count: size + 1) == nil)
        #expect(m.pointer(UInt64.max, count: 1) == nil)
        #expect(m.pointer(UInt64.max - 1, count: 4) == nil)  // address + count wraps
        #expect(m.pointer(1, count: UInt64.max) == nil)
        #expect(m.pointer(0x1_0000_0000, count: 1) == nil)   // no high RAM in a 4 MiB guest
        #expect(m.regions.count == 1)
    }

    @Test("pointers land at the right offset and typed helpers round-trip")
    func translation() throws {
        let m = try GuestMemory(size: 4 << 20)
        try m.store(UInt32(0xDEADBEEF), at: 0x1234)
        #expect(m.load(UInt32.self, at: 0x1234) == 0xDEADBEEF)
        #expect(m.pointer(0x1234, count: 4)!.load(as: UInt8.self) == 0xEF)     // little-endian
        #expect(m.pointer(0x1234, count: 1)! - m.pointer(0, count: 1)! == 0x1234)
        #expect(throws: GuestMemoryError.self) { try m.store(UInt64(1), at: (4 << 20) - 4) }
        #expect(m.bytes(at: (4 << 20) - 2, count: 15).count == 2)
    }

    @Test("read-only ranges refuse writable pointers that touch them")
    func readOnly() throws {
        let m = try GuestMemory(size: 4 << 20, readOnlyRanges: [0x2000 ..< 0x3000])
        #expect(m.pointer(0x2000, count: 16) != nil)
        #expect(m.writablePointer(0x2000, count: 16) == nil)
        #expect(m.writablePointer(0x1FFF, count: 2) == nil)
        #expect(m.writablePointer(0x2FFF, count: 1) == nil)
        #expect(m.writablePointer(0x1000, count: 0x1000) != nil)
        #expect(m.writablePointer(0x3000, count: 0x1000) != nil)
    }

    @Test("RAM above 3 GiB moves above 4 GiB, leaving the 32-bit PCI hole")
    func highMemory() throws {
        let size: UInt64 = (3 << 30) + (512 << 20)
        let m = try GuestMemory(size: size)
        #expect(m.regions.count == 2)
        #expect(m.regions[0].guestAddress == 0 && m.regions[0].size == 3 << 30)
        #expect(m.regions[1].guestAddress == 4 << 30 && m.regions[1].size == 512 << 20)
        #expect(m.lowMemoryEnd == 3 << 30)
        #expect(m.pointer((3 << 30) - 8, count: 8) != nil)
        #expect(m.pointer(3 << 30, count: 1) == nil)              // the hole
        #expect(m.pointer(0xFEE0_0000, count: 4) == nil)
        #expect(m.pointer(4 << 30, count: 512 << 20) != nil)
        #expect(m.pointer((4 << 30) + (512 << 20), count: 1) == nil)
        #expect(m.pointer((3 << 30) - 4, count: 8) == nil)        // straddles the hole
        // Host memory behind the two regions is contiguous, but the guest cannot use that.
        #expect(m.pointer(4 << 30, count: 1)! - m.pointer(0, count: 1)! == 3 << 30)
    }

    @Test("more memory than the host has is refused")
    func tooLarge() {
        #expect(throws: GuestMemoryError.self) { try GuestMemory(size: 1 << 50) }
    }
}

@Suite("Guest RAM in a memory file")
struct GuestMemoryFileTests {
    @Test("another mapping of the memory file sees the guest's bytes, both regions at their file offsets")
    func sharedMapping() throws {
        // 3 GiB + 8 MiB: a low region up to the PCI hole and 8 MiB above 4 GiB. Nothing is
        // touched but the two pages written, so this costs no real memory.
        let size = GuestMemory.lowMemoryLimit + (8 << 20)
        let memory = try GuestMemory(size: size)
        #expect(memory.regions.count == 2 && memory.regions[1].fileOffset == GuestMemory.lowMemoryLimit)
        try memory.store(UInt64(0x1122_3344_5566_7788), at: 0x10_0000)
        try memory.store(UInt64(0x99AA_BBCC_DDEE_FF00), at: GuestMemory.highMemoryStart + 0x1000)
        let other = mmap(nil, Int(size), PROT_READ, MAP_SHARED, memory.fd, 0)
        try #require(other != MAP_FAILED)
        defer { munmap(other, Int(size)) }
        #expect(other!.load(fromByteOffset: 0x10_0000, as: UInt64.self) == 0x1122_3344_5566_7788)
        #expect(other!.load(fromByteOffset: Int(memory.regions[1].fileOffset) + 0x1000, as: UInt64.self) == 0x99AA_BBCC_DDEE_FF00)
        // Close-on-exec: a child started by swiftvmm (virtiofsd, a teardown helper) gets it
        // only when passed on explicitly.
        #expect(fcntl(memory.fd, F_GETFD) & FD_CLOEXEC != 0)
    }
}
