import Foundation
import Testing

/// Linux's own virtio drivers as clients of swiftvmm's devices: a small test kernel built from
/// Debian's linux-source by `scripts/build-test-kernel` (about 4 minutes the first time), booted
/// with two disks (the second read-only), a tap and --rng, up to the point where it looks for
/// its root file system. Long, so opt-in: SWIFTVMM_LINUX_TESTS=1 scripts/test --filter Linux.
@Suite("Linux's virtio drivers against swiftvmm",
       .enabled(if: ProcessInfo.processInfo.environment["SWIFTVMM_LINUX_TESTS"] == "1",
                "opt-in (long): set SWIFTVMM_LINUX_TESTS=1"))
struct LinuxVirtioTests {
    /// What the project's notes say such a kernel needs on hosts whose KVM emulates guest
    /// kernel code (harmless elsewhere).
    static let commandLine = ["console=ttyS0", "panic=-1", "noxsave", "mitigations=off", "nokaslr",
                              "clearcpuid=popcnt,movbe,sse4_2,sse4_1,ssse3,aes,pclmulqdq,sha_ni,bmi1,bmi2,adx,rdtscp,avx,avx2,fma,f16c,smap,smep,pku,invpcid,xsave,xsaveopt,xsavec,xsaves,fsgsbase"]

    func testKernel() throws -> String {
        let p = Process()
        p.executableURL = Repo.root.appendingPathComponent("scripts/build-test-kernel")
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let path = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        p.waitUntilExit()
        try #require(p.terminationStatus == 0, "scripts/build-test-kernel failed")
        // The ELF vmlinux is what swiftvmm boots; the script prints it (or the bzImage beside it).
        let url = URL(fileURLWithPath: path)
        return url.lastPathComponent == "vmlinux" ? path : url.deletingLastPathComponent().appendingPathComponent("vmlinux").path
    }

    /// Run swiftvmm until the kernel prints `until` (then stop it with SIGTERM, which makes it
    /// print its --verbose counters) or `timeout` seconds pass.
    func boot(_ arguments: [String], launcher: [String], until: String, timeout: TimeInterval) throws -> RunResult {
        let w = try watchVMM(arguments, until: [until], timeout: timeout, launcher: launcher)
        return RunResult(status: w.status, stdout: w.output, stderr: w.stderr)
    }

    @Test("PCI IDs, MSI-X, vda/vdb with their sizes, vdb read-only, virtio-net with the given MAC, the hwrng")
    func linuxProbesEverything() throws {
        try requireKVMAndGuest()
        let kernel = try testKernel()
        let vda = try makeImage(sectors: 2048), vdb = try makeImage(sectors: 64)
        defer { try? FileManager.default.removeItem(at: vda); try? FileManager.default.removeItem(at: vdb) }
        let vdbBefore = try Data(contentsOf: vdb)
        let ns = try VirtioGuestTests.Namespace(tap: "tap0")
        let r = try boot(["--verbose", "64m", kernel, "--block=\(vda.path)", "--block=\(vdb.path),ro",
                          "--tunnet=tap0,mac=52:54:00:12:34:56", "--rng"] + Self.commandLine,
                         launcher: ["/usr/sbin/ip", "netns", "exec", ns.name], until: "Kernel panic", timeout: 600)
        for id in ["[1af4:1042] type 00 class 0x010000", "[1af4:1041] type 00 class 0x020000", "[1af4:1044] type 00 class 0xff0000"] {
            #expect(r.stdout.contains(id), "missing PCI device \(id)")
        }
        #expect(r.stdout.contains("virtio_blk virtio0: [vda] 2048 512-byte logical blocks"), "\(r.stdout.suffix(3000))")
        #expect(r.stdout.contains("virtio_blk virtio1: [vdb] 64 512-byte logical blocks"))
        // Every driver got to DRIVER_OK and its interrupts went out as MSI-X messages.
        let report = r.stderr.split(separator: "\n").map(String.init)
        for device in ["virtio-blk vda", "virtio-blk vdb", "virtio-net tap0", "virtio-rng"] {
            let line = report.first { $0.hasPrefix("swiftvmm: \(device):") }
            #expect(line?.contains("at exit driver ok") == true, "\(device): \(line ?? "no report")\n\(r.stderr)")
        }
        for device in ["virtio-blk vda", "virtio-rng"] {
            let line = report.first { $0.hasPrefix("swiftvmm: \(device):") } ?? ""
            #expect(!line.contains("(0 MSI-X") && !line.contains(" 0 requests"), "\(line)")
        }
        // vdb: Linux accepted VIRTIO_BLK_F_RO (bit 5); the file is untouched.
        if let line = report.first(where: { $0.hasPrefix("swiftvmm: virtio-blk vdb:") }),
           let hex = line.split(separator: "features 0x").last?.prefix { $0.isHexDigit },
           let features = UInt64(hex, radix: 16) {
            #expect(features & (1 << 5) != 0, "\(line)")
        } else {
            Issue.record("no features for vdb in:\n\(r.stderr)")
        }
        #expect(try Data(contentsOf: vdb) == vdbBefore)
        // virtio-net: Linux took the MAC from the config space (VIRTIO_NET_F_MAC negotiated).
        if let line = report.first(where: { $0.hasPrefix("swiftvmm: virtio-net tap0:") }),
           let hex = line.split(separator: "features 0x").last?.prefix { $0.isHexDigit },
           let features = UInt64(hex, radix: 16) {
            #expect(features & (1 << 5) != 0, "\(line)")
        } else {
            Issue.record("no features for virtio-net in:\n\(r.stderr)")
        }
    }
}
