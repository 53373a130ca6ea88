import Foundation
import Testing

/// The helper scripts users copy: test images and the CI smoke boot.
@Suite("Helper scripts")
struct ScriptTests {
    func run(_ script: String, _ args: [String], env: [String: String] = [:], timeout: TimeInterval = 120) throws -> RunResult {
        try runProcess(Repo.root.appendingPathComponent("scripts/\(script)").path, args, environment: env, timeout: timeout)
    }

    func tempDir() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvmm-scripts-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    func shell(_ command: String) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", command]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        p.waitUntilExit()
        return String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    }

    @Test("make-initramfs: a cpio with a static busybox and an init that runs the command")
    func initramfs() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let img = dir.appendingPathComponent("initrd.img").path
        let r = try run("make-initramfs", ["-o", img, "--", "echo", "hello world"])
        #expect(r.status == 0, "\(r.stderr)")
        let listing = try shell("gzip -dc '\(img)' | cpio -t 2>/dev/null")
        for entry in ["init", "bin/busybox", "bin/sh", "etc/command", "proc", "dev"] {
            #expect(listing.split(separator: "\n").contains(Substring(entry)), "\(entry) missing: \(listing)")
        }
        let unpack = dir.appendingPathComponent("x")
        try FileManager.default.createDirectory(at: unpack, withIntermediateDirectories: true)
        _ = try shell("cd '\(unpack.path)' && gzip -dc '\(img)' | cpio -id --quiet")
        #expect(try String(contentsOf: unpack.appendingPathComponent("etc/command"), encoding: .utf8) == "echo hello\\ world ")
        let initText = try String(contentsOf: unpack.appendingPathComponent("init"), encoding: .utf8)
        #expect(initText.contains("swiftvmm-init: exit status"))
        #expect(try shell("file -b '\(unpack.path)/bin/busybox' 2>/dev/null || echo static").contains("static"))
    }

    @Test("make-rootfs: an ext4 image that fsck accepts, built without root privileges or mounting")
    func rootfs() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let img = dir.appendingPathComponent("rootfs.ext4").path
        let r = try run("make-rootfs", ["-o", img, "-s", "16M", "--", "true"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try shell("e2fsck -fn '\(img)' >/dev/null 2>&1; echo $?").hasPrefix("0"))
        let ls = try shell("debugfs -R 'ls -p /sbin' '\(img)' 2>/dev/null")
        #expect(ls.contains("/init/"), "\(ls)")
        #expect(try shell("debugfs -R 'cat /etc/command' '\(img)' 2>/dev/null") == "true ")
    }

    @Test("smoke-boot: pattern seen → 0 with artifacts; pattern missing → 124 with the console's tail")
    func smokeBoot() throws {
        try requireKVMAndGuest()
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let ok = try run("smoke-boot", ["-e", "ready", "-a", dir.path, "-m", "32m", Repo.minimalGuest, "say=ready", "hang=spin"],
                         env: ["SWIFTVMM": Repo.swiftvmm])
        #expect(ok.status == 0, "\(ok.stdout) \(ok.stderr)")
        #expect(ok.stdout.contains("smoke-boot: exit 0: every --expect pattern matched"), "\(ok.stdout)")
        #expect(try String(contentsOf: dir.appendingPathComponent("console.log"), encoding: .utf8) == "ready\n")
        let report = try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("report.json"))) as? [String: Any]
        #expect(report?["outcome"] as? String == "expect-matched")

        let bad = try run("smoke-boot", ["-t", "1s", "-e", "never", "-a", dir.path, "-m", "32m", Repo.minimalGuest, "say=almost", "hang=spin"],
                          env: ["SWIFTVMM": Repo.swiftvmm])
        #expect(bad.status == 124)
        #expect(bad.stdout.contains("timed out after 1s"))
        #expect(bad.stdout.contains("console| almost"))
    }
}
