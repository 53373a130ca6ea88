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

    /// Runs make-initramfs for `command` and unpacks the image into `dir/x`.
    func unpackedInitramfs(in dir: URL, _ command: [String]) throws -> (image: String, tree: URL) {
        let img = dir.appendingPathComponent("initrd.img").path
        let r = try run("make-initramfs", ["-o", img, "--"] + command)
        #expect(r.status == 0, "\(r.stderr)")
        let tree = dir.appendingPathComponent("x")
        try FileManager.default.createDirectory(at: tree, withIntermediateDirectories: true)
        _ = try shell("cd '\(tree.path)' && gzip -dc '\(img)' | cpio -id --quiet")
        return (img, tree)
    }

    /// A 64-bit x86 ELF executable that needs no dynamic loader (no PT_INTERP): it runs in an
    /// initramfs that has no C library. Nil if so, else what is wrong.
    func staticX86_64Problem(_ path: String) throws -> String? {
        let b = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        func le(_ at: Int, _ n: Int) -> Int { (0..<n).reduce(0) { $0 | Int(b[at + $1]) << (8 * $1) } }
        guard b.count >= 64, b[0...3] == [0x7F, 0x45, 0x4C, 0x46] else { return "not an ELF file" }
        guard b[4] == 2, b[5] == 1, le(18, 2) == 62 else { return "not ELF64 little-endian x86-64" }
        let (phoff, phentsize, phnum) = (le(32, 8), le(54, 2), le(56, 2))
        guard phoff + phnum * phentsize <= b.count else { return "program headers out of the file" }
        let PT_INTERP = 3
        if (0..<phnum).contains(where: { le(phoff + $0 * phentsize, 4) == PT_INTERP }) {
            return "dynamically linked (it has a PT_INTERP program header)"
        }
        return nil
    }

    @Test("make-initramfs: a cpio with a static busybox, the static swiftvmm-exit and an init that runs the command")
    func initramfs() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let (img, unpack) = try unpackedInitramfs(in: dir, ["echo", "hello world"])
        let listing = try shell("gzip -dc '\(img)' | cpio -t 2>/dev/null")
        for entry in ["init", "bin/busybox", "bin/sh", "bin/swiftvmm-exit", "etc/command", "proc", "dev"] {
            #expect(listing.split(separator: "\n").contains(Substring(entry)), "\(entry) missing: \(listing)")
        }
        #expect(try String(contentsOf: unpack.appendingPathComponent("etc/command"), encoding: .utf8) == "echo hello\\ world ")
        let initText = try String(contentsOf: unpack.appendingPathComponent("init"), encoding: .utf8)
        #expect(initText.contains("swiftvmm-init: exit status"))
        #expect(initText.contains("/bin/swiftvmm-exit \"$status\""), "\(initText)")
        for program in ["bin/busybox", "bin/swiftvmm-exit"] {
            let problem = try staticX86_64Problem(unpack.appendingPathComponent(program).path)
            #expect(problem == nil, "\(program): \(problem ?? "")")
        }
    }

    @Test("swiftvmm-exit: bad arguments exit 64 with the reason; the port takes privileges; -n writes nothing")
    func exitHelper() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        // Readable by the unprivileged user below.
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: dir.path)
        let helper = try unpackedInitramfs(in: dir, ["true"]).tree.appendingPathComponent("bin/swiftvmm-exit").path
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: dir.appendingPathComponent("x").path)

        // -n throughout: on the host, port 0xf4 is real hardware (or nothing), not swiftvmm's
        // debug-exit, and a parsing bug must not turn a test into a port write.
        let refused: [([String], String)] = [
            ([], "usage: swiftvmm-exit [-n] STATUS [PORT]"),
            (["-n"], "usage: swiftvmm-exit"),
            (["-n", "1", "2", "3"], "usage: swiftvmm-exit"),
            (["-n", "256"], "swiftvmm-exit: status '256' is not a number from 0 to 255"),
            (["-n", "-1"], "status '-1' is not a number"),
            (["-n", " 7"], "status ' 7' is not a number"),
            (["-n", "seven"], "status 'seven' is not a number"),
            (["-n", ""], "status '' is not a number"),
            (["-n", "7", "0x10000"], "swiftvmm-exit: port '0x10000' is not a port number (0-0xfffc)"),
            (["-n", "7", "0xf4z"], "port '0xf4z' is not a port number"),
            (["-n", "7", "0x"], "port '0x' is not a port number"),
        ]
        for (args, message) in refused {
            let r = try runProcess(helper, args)
            #expect(r.status == 64, "\(args): exit \(r.status), \(r.stderr)")
            #expect(r.stderr.contains(message), "\(args): \(r.stderr)")
            #expect(r.stdout.isEmpty, "\(args): \(r.stdout)")
        }

        // Good arguments: -n says what it would write, then only takes the port. Whether the
        // host lets root at ports depends on its kernel (CONFIG_X86_IOPL_IOPERM, lockdown).
        for (args, line, port) in [(["-n", "7"], "would write 7 to port 0xf4", "0xf4"),
                                   (["-n", "0x2a", "0x501"], "would write 42 to port 0x501", "0x501"),
                                   (["-n", "255", "65532"], "would write 255 to port 0xfffc", "0xfffc")] {
            let r = try runProcess(helper, args)
            #expect(r.stdout == "swiftvmm-exit: \(line)\n", "\(args): \(r.stdout)")
            #expect(r.status == 0 || (r.status == 1 && r.stderr.contains("no access to port \(port): ")),
                    "\(args): exit \(r.status), \(r.stderr)")
        }

        // Without privileges the port is refused, and the helper says so (as root: run it as nobody).
        let unprivileged = getuid() == 0
            ? try runProcess("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", helper, "-n", "7"])
            : try runProcess(helper, ["-n", "7"])
        #expect(unprivileged.status == 1, "exit \(unprivileged.status), \(unprivileged.stderr)")
        #expect(unprivileged.stderr.contains("swiftvmm-exit: no access to port 0xf4: "), "\(unprivileged.stderr)")
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
        let bin = try shell("debugfs -R 'ls -p /bin' '\(img)' 2>/dev/null")
        #expect(bin.contains("/swiftvmm-exit/"), "\(bin)")
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

    @Test("kvm-testbed: usage errors are 64 with the reason, a missing swiftvmm binary 125, --help the usage")
    func testbedArguments() throws {
        let help = try run("kvm-testbed", ["--help"])
        #expect(help.status == 0)
        #expect(help.stdout.contains("Run swiftvmm on a real hardware-virtualization KVM"), "\(help.stdout)")
        for (args, message) in [(["--cpus", "3", "--", "32m", "x"], "--cpus must be 1 or 2"),
                                (["--stdout", "pipe", "--", "32m", "x"], "--stdout must be tty or file"),
                                (["--timeout", "5", "--", "32m", "x"], "--timeout must be 60..86400 seconds"),
                                ([String](), "Usage")] {   // no swiftvmm line: the usage, on stderr
            let r = try run("kvm-testbed", args)
            #expect(r.status == 64, "\(args): \(r.stderr)")
            #expect(r.stderr.contains(message == "Usage" ? "scripts/kvm-testbed [bed options] [--] SWIFTVMM-ARGS..." : message),
                    "\(args): \(r.stderr)")
        }
        let missing = try run("kvm-testbed", ["--swiftvmm", "/nonexistent/swiftvmm", "--", "32m", "x"])
        #expect(missing.status == 125)
        #expect(missing.stderr.contains("kvm-testbed: no swiftvmm binary at /nonexistent/swiftvmm"), "\(missing.stderr)")
    }
}
