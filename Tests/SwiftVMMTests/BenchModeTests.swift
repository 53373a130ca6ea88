import Foundation
import Testing

/// The minimal guest's virtio benchmark modes (guests/minimal/bench_virtio.c), which
/// scripts/bench times, run to completion under swiftvmm with small sizes, so they cannot rot
/// between benchmark runs. No timings are asserted: only that the work was done.
@Suite("Benchmark modes of the minimal guest")
struct BenchModeTests {
    static let mib = 1 << 20

    func expectClean(_ r: RunResult, _ what: String) {
        #expect(r.status == 0, "\(what): exit \(r.status)\nstdout: \(r.stdout)\nstderr: \(r.stderr)")
        #expect(!r.stdout.contains("bench:"), "\(what): \(r.stdout)")
        // The mode times its transfer itself; the harness reads this line.
        let ticks = r.lines.filter { $0.hasPrefix("bench-ticks: ") }.compactMap { Int($0.dropFirst(13)) }
        #expect(ticks.count == 1 && ticks[0] > 0, "\(what): \(r.stdout)")
    }

    @Test("blk-read: 4 KiB at queue depth 1, and 4 MiB round a 2 MiB disk twice at depth 32")
    func blkRead() throws {
        let image = try makeImage(sectors: 2 * Self.mib / 512)
        defer { try? FileManager.default.removeItem(at: image) }
        let before = try Data(contentsOf: image)
        for word in ["bench=blk-read:\(Self.mib):4096:1", "bench=blk-read:\(4 * Self.mib):4096:32",
                     "bench=blk-read:\(Self.mib):131072:32"] {
            expectClean(try bootMinimal([word], options: ["--block=\(image.path)"]), word)
        }
        #expect(try Data(contentsOf: image) == before, "a read benchmark changed the disk")
    }

    @Test("blk-write: 1 MiB in 128 KiB requests at depth 32 lands on the first 1 MiB of the disk, and only there")
    func blkWrite() throws {
        let image = try makeImage(sectors: 2 * Self.mib / 512)
        defer { try? FileManager.default.removeItem(at: image) }
        let before = try Data(contentsOf: image)
        expectClean(try bootMinimal(["bench=blk-write:\(Self.mib):131072:32"], options: ["--block=\(image.path)"]),
                    "blk-write")
        let after = try Data(contentsOf: image)
        // The guest writes its untouched (zeroed) buffers; the pattern has no zero sectors.
        #expect(after.count == before.count)
        #expect(after.prefix(Self.mib).allSatisfy { $0 == 0 }, "the first 1 MiB was not written")
        #expect(after.suffix(from: Self.mib) == before.suffix(from: Self.mib), "the guest wrote past 1 MiB")
    }

    @Test("blk modes refuse what they cannot do: a request size that is not whole sectors, no disk")
    func blkBadArguments() throws {
        let image = try makeImage(sectors: 64)
        defer { try? FileManager.default.removeItem(at: image) }
        let r = try bootMinimal(["bench=blk-read:4096:1000:1"], options: ["--block=\(image.path)"])
        #expect(r.status == 1 && r.stdout.contains("bench: REQSIZE must be a multiple of 512"), "\(r.stdout)")
        let none = try bootMinimal(["bench=blk-write:4096:4096:1"])
        #expect(none.status == 1 && none.stdout.contains("bench: no writable virtio-blk device"), "\(none.stdout)")
    }

    @Test("net-tx: 1 MiB of 1514-byte frames reaches the tap, every frame of it")
    func netTransmit() throws {
        try requireKVMAndGuest()
        let ns = try VirtioGuestTests.Namespace(tap: "tap0")
        let before = try tapCounter(ns, "rx_packets")
        let r = try runVMM(["32m", Repo.minimalGuest, "bench=net-tx:\(Self.mib):1514", "--tunnet=tap0"],
                           launcher: ["/usr/sbin/ip", "netns", "exec", ns.name])
        expectClean(r, "net-tx")
        let frames = (Self.mib + 1513) / 1514
        // The host may add a frame or two of its own (IPv6 neighbour discovery), never fewer.
        #expect(try tapCounter(ns, "rx_packets") - before >= frames)
    }

    @Test("net-rx: the guest counts 1 MiB of frames that a sender in the namespace floods the tap with")
    func netReceive() throws {
        try requireKVMAndGuest()
        let ns = try VirtioGuestTests.Namespace(tap: "tap0")
        let sender = try ns.floodTap("tap0", burst: 64, pause: 0.001)
        defer { kill(sender.processIdentifier, SIGKILL); sender.waitUntilExit() }
        let r = try runVMM(["32m", Repo.minimalGuest, "bench=net-rx:\(Self.mib)", "--tunnet=tap0"],
                           launcher: ["/usr/sbin/ip", "netns", "exec", ns.name])
        expectClean(r, "net-rx")
        #expect(sender.isRunning, "the frame sender died early")
    }

    func tapCounter(_ ns: VirtioGuestTests.Namespace, _ name: String) throws -> Int {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        p.arguments = ["netns", "exec", ns.name, "cat", "/sys/class/net/tap0/statistics/\(name)"]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return try #require(Int(text.trimmingCharacters(in: .whitespacesAndNewlines)), "tap counter \(name): '\(text)'")
    }
}
