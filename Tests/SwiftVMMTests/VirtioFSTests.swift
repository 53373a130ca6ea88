import Foundation
import Testing

/// End-to-end virtio-fs: the minimal guest's FUSE client (`test=virtio-fs`) against QEMU's
/// virtiofsd, which swiftvmm starts per share and hands the rings to over vhost-user, on a
/// temporary directory the test fills and checks from the host side.
///
/// They need root (virtiofsd's sandbox; a ',ro' share's read-only bind mount) and QEMU's
/// virtiofsd (Debian's qemu-system-common, which scripts/setup installs): without either
/// they fail and say what is missing, they never skip.
@Suite("virtio-fs with the minimal guest and virtiofsd", .serialized)
struct VirtioFSTests {
    static let virtiofsd = "/usr/lib/qemu/virtiofsd"
    /// What the host puts in the share for the guest to read (35 bytes).
    static let hostText = "Hello from the host over virtio-fs\n"
    /// What the guest writes into the file it creates (virtio_fs.c's `written`).
    static let guestText = "written by the minimal guest over virtio-fs\n"

    static func requireVirtiofsd() throws {
        try requireKVMAndGuest()
        let root = geteuid() == 0
        if !root { Issue.record("the virtio-fs tests need root (virtiofsd's sandbox, read-only bind mounts)") }
        try #require(root)
        let present = FileManager.default.isExecutableFile(atPath: virtiofsd)
        if !present { Issue.record("\(virtiofsd) is missing: install qemu-system-common (scripts/setup does)") }
        try #require(present)
    }

    /// A fresh directory holding hello.txt, removed by the caller.
    static func makeShare() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvmm-fs-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: false)
        try hostText.write(to: dir.appendingPathComponent("hello.txt"), atomically: false, encoding: .utf8)
        return dir
    }

    /// Each file in `dir` with its contents.
    static func snapshot(_ dir: URL) throws -> [String: Data] {
        var files: [String: Data] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: dir.path) {
            files[name] = try Data(contentsOf: dir.appendingPathComponent(name))
        }
        return files
    }

    /// Live processes whose command line names `dir`: a virtiofsd swiftvmm left behind.
    static func processes(naming dir: URL) -> [String] {
        let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return pids.filter { Int32($0) != nil }.compactMap { pid in
            guard let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return nil }
            let cmdline = String(decoding: raw.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
            return cmdline.contains(dir.path) ? "\(pid): \(cmdline)" : nil
        }
    }

    func expectPasses(_ r: RunResult, _ names: [String]) {
        let failures = r.lines.filter { $0.hasPrefix("FAIL") }
        #expect(failures.isEmpty, "\(failures)\nstdout:\n\(r.stdout)\nstderr: \(r.stderr)")
        for name in names { #expect(r.lines.contains("PASS \(name)"), "missing PASS \(name) in:\n\(r.stdout)\nstderr: \(r.stderr)") }
        #expect(r.status == 0, "exit \(r.status), stderr: \(r.stderr)")
    }

    static let readChecks = ["fs-config", "fs-start", "fs-init", "fs-init-version", "fs-msix", "fs-lookup",
                             "fs-lookup-attr", "fs-open", "fs-read", "fs-read-size", "fs-release"]

    @Test("a read-only share: the guest reads the host's file over FUSE, its create fails with EROFS, the directory is unchanged")
    func readOnlyShare() throws {
        try Self.requireVirtiofsd()
        let dir = try Self.makeShare()
        defer { try? FileManager.default.removeItem(at: dir) }
        let before = try Self.snapshot(dir)
        let r = try bootMinimal(["test=virtio-fs", "fs-file=hello.txt", "fs-create=new.txt", "fs-ro"],
                                options: ["--virtiofs=\(dir.path),tag=hostshare,ro", "--verbose"])
        expectPasses(r, Self.readChecks + ["fs-create-erofs"])
        #expect(r.lines.contains("virtio-fs: tag 'hostshare', num_request_queues 1"), "\(r.stdout)")
        #expect(r.lines.contains { $0.hasPrefix("virtio-fs: hello.txt: nodeid ") && $0.contains(", size 35, ") }, "\(r.stdout)")
        #expect(r.lines.contains(#"virtio-fs: read 35 bytes: "Hello from the host over virtio-fs\n""#), "\(r.stdout)")
        #expect(r.lines.contains("virtio-fs: create new.txt: error -30"), "\(r.stdout)")
        #expect(try Self.snapshot(dir) == before, "the read-only share changed")
        // The requests went through the device, and virtiofsd ended with the run.
        #expect(r.stderr.contains("swiftvmm: virtio-fs hostshare: at exit"), "\(r.stderr)")
        #expect(Self.processes(naming: dir).isEmpty, "left behind: \(Self.processes(naming: dir))")
    }

    @Test("a writable share: the file the guest creates and writes is on the host with exactly that content")
    func writableShare() throws {
        try Self.requireVirtiofsd()
        let dir = try Self.makeShare()
        defer { try? FileManager.default.removeItem(at: dir) }
        let r = try bootMinimal(["test=virtio-fs", "fs-file=hello.txt", "fs-create=made-by-guest.txt"],
                                options: ["--virtiofs=\(dir.path)"])
        expectPasses(r, Self.readChecks + ["fs-create", "fs-write", "fs-write-size", "fs-release-new"])
        #expect(r.lines.contains("virtio-fs: tag 'fs0', num_request_queues 1"), "\(r.stdout)")
        #expect(r.lines.contains("virtio-fs: create made-by-guest.txt: error 0"), "\(r.stdout)")
        let files = try Self.snapshot(dir)
        #expect(Set(files.keys) == ["hello.txt", "made-by-guest.txt"])
        #expect(files["made-by-guest.txt"].map { String(decoding: $0, as: UTF8.self) } == Self.guestText)
        #expect(files["hello.txt"] == Data(Self.hostText.utf8))
        #expect(Self.processes(naming: dir).isEmpty, "left behind: \(Self.processes(naming: dir))")
    }

    @Test("virtiofsd killed while the guest keeps the device busy: swiftvmm ends at once with 70 and says how it died")
    func virtiofsdKilled() throws {
        try Self.requireVirtiofsd()
        let dir = try Self.makeShare()
        defer { try? FileManager.default.removeItem(at: dir) }

        let process = Process()
        process.executableURL = URL(fileURLWithPath: Repo.swiftvmm)
        process.arguments = ["--virtiofs=\(dir.path)", "--timeout=120s", "32m", Repo.minimalGuest,
                             "test=virtio-fs", "fs-hold=60"]
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        final class Box: @unchecked Sendable {
            let lock = NSLock()
            var out = Data(), err = Data()
            var text: String { lock.withLock { String(decoding: out, as: UTF8.self) } }
        }
        let box = Box()
        out.fileHandleForReading.readabilityHandler = { h in
            let d = h.availableData
            box.lock.withLock { box.out.append(d) }
        }
        err.fileHandleForReading.readabilityHandler = { h in
            let d = h.availableData
            box.lock.withLock { box.err.append(d) }
        }
        try process.run()
        defer {
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }

        // Wait until the guest is in its GETATTR loop.
        let holding = "virtio-fs: holding the device for 60 s\n"
        let started = Date()
        while process.isRunning && !box.text.contains(holding) && Date().timeIntervalSince(started) < 60 { usleep(20_000) }
        try #require(box.text.contains(holding), "the guest never started holding the device:\n\(box.text)")
        usleep(300_000)
        let children = Self.children(of: process.processIdentifier)
        let backends = children.filter { Self.command(of: $0) == "virtiofsd" }
        try #require(backends.count == 1, "expected one virtiofsd child of swiftvmm, found \(children.map { "\($0) \(Self.command(of: $0))" })")
        let backend = backends[0]

        kill(backend, SIGKILL)
        let killedAt = Date()
        while process.isRunning && Date().timeIntervalSince(killedAt) < 20 { usleep(10_000) }
        let took = Date().timeIntervalSince(killedAt)
        #expect(!process.isRunning, "swiftvmm still running 20 s after its virtiofsd was killed")
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        out.fileHandleForReading.readabilityHandler = nil
        err.fileHandleForReading.readabilityHandler = nil
        let stderr = box.lock.withLock { String(decoding: box.err, as: UTF8.self) }
        #expect(process.terminationReason == .exit && process.terminationStatus == 70,
                "exit \(process.terminationStatus) (\(process.terminationReason)), stderr: \(stderr)")
        #expect(took < 20)
        let line = stderr.split(separator: "\n").first { $0.contains("virtiofsd (pid \(backend))") } ?? ""
        #expect(line.contains("killed by signal 9"), "no line naming virtiofsd (pid \(backend)) and its SIGKILL in:\n\(stderr)")
        // The guest never got to the end of its hold.
        #expect(!box.text.contains("FUSE_GETATTR rounds"), "\(box.text)")
    }

    /// The children of every thread of `pid` (virtiofsd is forked from whichever thread
    /// built the machine).
    static func children(of pid: Int32) -> [Int32] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        return tasks.flatMap { t -> [Int32] in
            let list = (try? String(contentsOfFile: "/proc/\(pid)/task/\(t)/children", encoding: .utf8)) ?? ""
            return list.split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
    }

    static func command(of pid: Int32) -> String {
        ((try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) ?? "?").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test("a missing shared directory exits 66, a missing virtiofsd 69, a tag over 36 bytes 64; each says so in one line")
    func badOptions() throws {
        try Self.requireVirtiofsd()
        let missing = "/nonexistent/swiftvmm-share-\(UUID().uuidString)"
        let noDir = try bootMinimal(["hello"], options: ["--virtiofs=\(missing)"])
        #expect(noDir.status == 66, "\(noDir.stderr)")
        #expect(noDir.stderr == "swiftvmm: cannot share \(missing): No such file or directory\n", "\(noDir.stderr)")

        let dir = try Self.makeShare()
        defer { try? FileManager.default.removeItem(at: dir) }
        let noDaemon = try bootMinimal(["hello"], options: ["--virtiofs=\(dir.path)", "--virtiofsd=/nonexistent"])
        #expect(noDaemon.status == 69, "\(noDaemon.stderr)")
        #expect(noDaemon.stderr == "swiftvmm: virtiofsd /nonexistent is not an executable file\n", "\(noDaemon.stderr)")

        let tag = String(repeating: "t", count: 37)
        let longTag = try bootMinimal(["hello"], options: ["--virtiofs=\(dir.path),tag=\(tag)"])
        #expect(longTag.status == 64, "\(longTag.stderr)")
        let first = longTag.stderr.split(separator: "\n").first ?? ""
        #expect(first.contains(tag) && first.contains("the tag must be 1 to 36 bytes"), "\(longTag.stderr)")
        // None of them started the guest, or left a virtiofsd behind.
        for r in [noDir, noDaemon, longTag] { #expect(!r.stdout.contains("Hello from the minimal guest")) }
        #expect(Self.processes(naming: dir).isEmpty, "left behind: \(Self.processes(naming: dir))")
    }
}
