import Foundation
import Testing

/// The bundled guest's virtio drivers, checked against QEMU's virtio devices: the same guest, the
/// same test words, the same disk pattern as the swiftvmm end-to-end tests. If these pass under QEMU
/// but fail under swiftvmm, the bug is on the host side (and the other way round).
///
/// Without `qemu-system-x86_64` the tests are reported as skipped, with that reason, rather than
/// passing without having run.
@Suite("Cross-check: the minimal guest's virtio drivers under QEMU",
       .disabled(if: QEMURunner.binary == nil, "qemu-system-x86_64 is not installed: the QEMU cross-check did not run"))
struct QEMUCrossCheckTests {
    @Test("test=blk: reads the pattern, writes sectors 2-3, flushes, GET_ID; the file shows the write")
    func blk() throws {
        let disk = try CrossCheckDisk(sectors: 2048)
        let r = try QEMURunner.boot(["test=blk"], devices: [
            "-drive", "file=\(disk.path),if=none,id=d0,format=raw",
            "-device", "virtio-blk-pci,drive=d0,disable-legacy=on,serial=crosscheck-id",
        ])
        r.expectPasses(["blk-init", "blk-msix", "blk-read", "blk-read-last", "blk-write", "blk-readback",
                        "blk-flush", "blk-get-id"])
        #expect(r.lines.contains { $0.hasSuffix("blk: id 'crosscheck-id'") }, "\(r.stdout)")
        #expect(r.guestStatus == 0, "QEMU exit status \(r.status); stderr: \(r.stderr)")
        let changed = try disk.sectorsNotHoldingPattern()
        #expect(changed == [2, 3], "sectors that differ from the read pattern: \(changed)")
        #expect(try disk.holdsWritePattern(sector: 2) && disk.holdsWritePattern(sector: 3))
    }

    @Test("test=blk on a device without MSI-X (vectors=0): the request completes with an INTx interrupt")
    func blkINTx() throws {
        let disk = try CrossCheckDisk(sectors: 64)
        let r = try QEMURunner.boot(["test=blk"], devices: [
            "-drive", "file=\(disk.path),if=none,id=d0,format=raw",
            "-device", "virtio-blk-pci,drive=d0,disable-legacy=on,vectors=0",
        ])
        r.expectPasses(["blk-init", "blk-intx", "blk-read", "blk-read-last", "blk-write", "blk-readback"])
        #expect(r.guestStatus == 0, "QEMU exit status \(r.status); stderr: \(r.stderr)")
        #expect(try disk.sectorsNotHoldingPattern() == [2, 3])
    }

    @Test("test=blk-ro: with read-only=on, reads work, the write fails with IOERR, the file is unchanged")
    func blkReadOnly() throws {
        let disk = try CrossCheckDisk(sectors: 2048)
        let r = try QEMURunner.boot(["test=blk-ro"], devices: [
            "-drive", "file=\(disk.path),if=none,id=d0,format=raw,read-only=on",
            "-device", "virtio-blk-pci,drive=d0,disable-legacy=on",
        ])
        r.expectPasses(["blk-ro-feature", "blk-ro-read", "blk-ro-write", "blk-ro-unchanged"])
        #expect(r.guestStatus == 0, "QEMU exit status \(r.status); stderr: \(r.stderr)")
        #expect(try disk.sectorsNotHoldingPattern() == [])
    }

    @Test("test=rng: virtio-rng returns random bytes")
    func rng() throws {
        let r = try QEMURunner.boot(["test=rng"], devices: ["-device", "virtio-rng-pci,disable-legacy=on"])
        r.expectPasses(["rng-read"])
        #expect(r.guestStatus == 0, "QEMU exit status \(r.status); stderr: \(r.stderr)")
    }

    @Test("test=net: ARP and ICMP echo through QEMU's user network (10.0.2.2 answers both)")
    func net() throws {
        let r = try QEMURunner.boot(["test=net", "ip=10.0.2.15", "peer=10.0.2.2"], devices: [
            "-netdev", "user,id=n0,restrict=on",
            "-device", "virtio-net-pci,netdev=n0,disable-legacy=on,romfile=",
        ])
        r.expectPasses(["net-mac", "net-arp", "net-ping"])
        #expect(r.lines.contains { $0.hasSuffix("net: peer mac 52:55:0a:00:02:02") }, "\(r.stdout)")
        #expect(r.guestStatus == 0, "QEMU exit status \(r.status); stderr: \(r.stderr)")
    }

    @Test("a test word without its device fails in the guest instead of passing")
    func missingDevice() throws {
        let r = try QEMURunner.boot(["test=rng"], devices: [])
        #expect(r.lines.contains { $0.hasSuffix("FAIL rng: no virtio-rng device") }, "\(r.stdout)")
        #expect(r.guestStatus == 1, "QEMU exit status \(r.status)")
    }
}

/// Running the bundled guest under QEMU (q35, booted through the guest's PVH note).
fileprivate enum QEMURunner {
    static let binary: String? = {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for dir in path.split(separator: ":") {
            let candidate = "\(dir)/qemu-system-x86_64"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }()

    /// KVM when /dev/kvm can be opened, else QEMU's own emulator. On the project's PVM machines,
    /// plain `-cpu host` aborts while setting MSR 0x10a, hence `-arch-capabilities`.
    static var accelerator: [String] {
        let fd = open("/dev/kvm", O_RDWR)
        if fd >= 0 {
            close(fd)
            return ["-enable-kvm", "-cpu", "host,-arch-capabilities"]
        }
        return ["-accel", "tcg", "-cpu", "max"]
    }

    struct Result {
        let status: Int32
        let stdout: String
        let stderr: String
        var lines: [String] { stdout.split(separator: "\n").map(String.init) }
        /// isa-debug-exit turns the guest's status into QEMU's `(status << 1) | 1`.
        var guestStatus: Int32? { status & 1 == 1 ? status >> 1 : nil }

        /// SeaBIOS leaves "Booting from ROM.." without a newline, so a check line may follow it.
        func expectPasses(_ names: [String], sourceLocation: SourceLocation = #_sourceLocation) {
            let failures = lines.filter { $0.contains("FAIL ") }
            #expect(failures.isEmpty, "\(failures)", sourceLocation: sourceLocation)
            for name in names {
                #expect(lines.contains { $0.hasSuffix("PASS \(name)") },
                        "missing PASS \(name) in:\n\(stdout)", sourceLocation: sourceLocation)
            }
        }
    }

    static func boot(_ words: [String], devices: [String], timeout: TimeInterval = 120) throws -> Result {
        let guest = Repo.minimalGuest
        let haveGuest = FileManager.default.fileExists(atPath: guest)
        if !haveGuest { Issue.record("\(guest) is missing: run `make -C guests/minimal` first") }
        try #require(haveGuest)
        let arguments = ["-M", "q35"] + accelerator + [
            "-m", "64m", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-kernel", guest, "-append", words.joined(separator: " "),
        ] + devices
        return try run(binary!, arguments, timeout: timeout)
    }

    static func run(_ executable: String, _ arguments: [String], timeout: TimeInterval) throws -> Result {
        let r = try runProcess(executable, arguments, timeout: timeout)
        return Result(status: r.status, stdout: r.stdout, stderr: r.stderr)
    }
}

/// A raw disk image in a temporary file, filled with the guest's read pattern
/// (guests/minimal/README.md): byte i of sector s is (i + 31*s + s/256) mod 256.
/// The write pattern is its complement.
fileprivate final class CrossCheckDisk {
    static let sectorSize = 512
    let path: String
    let sectors: Int

    init(sectors: Int) throws {
        self.sectors = sectors
        path = FileManager.default.temporaryDirectory
            .appendingPathComponent("swiftvmm-crosscheck-\(UUID().uuidString).img").path
        var bytes = [UInt8](repeating: 0, count: sectors * Self.sectorSize)
        for s in 0..<sectors {
            for i in 0..<Self.sectorSize { bytes[s * Self.sectorSize + i] = Self.pattern(sector: s, byte: i) }
        }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    static func pattern(sector s: Int, byte i: Int) -> UInt8 {
        UInt8(truncatingIfNeeded: i + 31 * s + s / 256)
    }

    private func contents() throws -> [UInt8] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(data.count == sectors * Self.sectorSize, "the image changed size: \(data.count) bytes")
        return [UInt8](data)
    }

    /// Sectors whose bytes are not the read pattern.
    func sectorsNotHoldingPattern() throws -> [Int] {
        let bytes = try contents()
        return (0..<min(sectors, bytes.count / Self.sectorSize)).filter { s in
            (0..<Self.sectorSize).contains { i in bytes[s * Self.sectorSize + i] != Self.pattern(sector: s, byte: i) }
        }
    }

    func holdsWritePattern(sector s: Int) throws -> Bool {
        let bytes = try contents()
        return (0..<Self.sectorSize).allSatisfy { i in bytes[s * Self.sectorSize + i] == ~Self.pattern(sector: s, byte: i) }
    }
}
