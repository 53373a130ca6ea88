import Exec
import Foundation
import Testing

/// guests/init, built once per test run (make does nothing when it is up to date): the init
/// and build/check-parse, its exec.conf parser as a host program.
enum GuestInit {
    static let folder = Repo.root.appendingPathComponent("guests/init")
    static var binary: String { folder.appendingPathComponent("build/swiftvmm-init").path }
    static var checkParse: String { folder.appendingPathComponent("build/check-parse").path }

    private static let buildProblem: String? = {
        guard let r = try? runProcess("/usr/bin/make", ["-s", "-C", folder.path], timeout: 120) else {
            return "make -C guests/init did not finish"
        }
        return r.status == 0 ? nil : "make -C guests/init failed (\(r.status)): \(r.stdout)\(r.stderr)"
    }()

    static func require() throws {
        if let problem = buildProblem { Issue.record(Comment(rawValue: problem)) }
        try #require(buildProblem == nil)
    }

    /// check-parse on `bytes`: its exit status and output.
    static func parse(_ bytes: [UInt8], in dir: URL) throws -> RunResult {
        try require()
        let file = dir.appendingPathComponent("exec-\(UUID()).conf")
        try Data(bytes).write(to: file)
        return try runProcess(checkParse, [file.path])
    }
}

/// The value as check-parse prints it (conf_quote): printable ASCII as is, \" \\ and \xNN.
func confQuoted(_ s: String) -> String {
    var out = "\""
    for b in s.utf8 {
        switch b {
        case UInt8(ascii: "\""): out += "\\\""
        case UInt8(ascii: "\\"): out += "\\\\"
        case 0x20..<0x7F: out += String(UnicodeScalar(b))
        default: out += String(format: "\\x%02x", b)
        }
    }
    return out + "\""
}

/// The lines check-parse prints for a spec the init accepts.
func checkParseLines(_ spec: ExecSpec) -> [String] {
    var lines = spec.argv.map { "arg " + confQuoted($0) } + spec.env.map { "env " + confQuoted($0) }
    lines += ["cwd " + confQuoted(spec.cwd), "uid \(spec.uid)", "gid \(spec.gid)",
              "groups" + (spec.groups.isEmpty ? "" : " " + spec.groups.map(String.init).joined(separator: ","))]
    lines += spec.rwShares.map { "rw \(confQuoted($0.tag)) \(confQuoted($0.path))" }
    if let d = spec.modulesDir { lines.append("modules-dir " + confQuoted(d)) }
    lines += spec.modules.map { ($0.hasSuffix(".ko") ? "module " : "module compressed ") + confQuoted($0) }
    return lines + [""]
}

func execError(_ body: () throws(ExecError) -> Void) -> ExecError? {
    do { try body(); return nil } catch { return error }
}

/// Records `KEY\0VALUE\0`, for files the Swift side would never write.
func confRecords(_ pairs: [(String, String)]) -> [UInt8] {
    pairs.flatMap { Array($0.0.utf8) + [0] + Array($0.1.utf8) + [0] }
}

@Suite("exec: the initramfs (cpio), exec.conf and the init's parser, kernel modules")
struct ExecInitramfsTests {
    func tempDir() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvmm-exec-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    func sh(_ command: String) throws -> RunResult { try runProcess("/bin/sh", ["-c", command]) }

    /// Unpack `archive` with the real cpio into `dir/x`, device nodes left out (a container
    /// may refuse mknod); returns the tree.
    func extract(_ archive: [UInt8], in dir: URL) throws -> URL {
        let file = dir.appendingPathComponent("archive.cpio")
        try Data(archive).write(to: file)
        let tree = dir.appendingPathComponent("x")
        try FileManager.default.createDirectory(at: tree, withIntermediateDirectories: true)
        let r = try sh("cd '\(tree.path)' && cpio -idm --no-absolute-filenames --quiet --nonmatching 'dev/console' < '\(file.path)'")
        #expect(r.status == 0, "cpio -idm: \(r.stderr)")
        return tree
    }

    func listing(_ archive: [UInt8], in dir: URL, verbose: Bool = false) throws -> [String] {
        let file = dir.appendingPathComponent("list-\(UUID()).cpio")
        try Data(archive).write(to: file)
        let r = try sh("cpio -t\(verbose ? "v" : "") --quiet < '\(file.path)'")
        #expect(r.status == 0, "cpio -t: \(r.stderr)")
        return r.stdout.split(separator: "\n").map(String.init)
    }

    // MARK: cpio

    @Test("cpio: the real cpio lists every entry in order and extracts the same bytes, links, modes and times")
    func cpioRoundTrip() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        var rng = SeededRandom(seed: 42)
        var files: [(String, [UInt8], UInt32)] = []
        // Every data length modulo 4, so every padding case; a big one; all 256 byte values.
        for n in [0, 1, 2, 3, 4, 5, 6, 7, 70_001] {
            files.append(("data/len\(n).bin", (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }, 0o644))
        }
        files.append(("bin/tool", (0...255).map { UInt8($0) }, 0o755))
        var a = CPIOArchive()
        try a.addDirectory("/a/b/c", mode: 0o700)
        for (name, bytes, mode) in files { try a.addFile("/" + name, contents: bytes, mode: mode) }
        try a.addSymlink("a/link", target: "b/c")
        try a.addCharacterDevice("dev/console", major: 5, minor: 1)
        try a.addFile("name with spaces and ünïcödé", contents: Array("x".utf8))

        let expected = ["a", "a/b", "a/b/c", "data"] + files.prefix(9).map(\.0) + ["bin", "bin/tool", "a/link", "dev", "dev/console",
                                                                               "name with spaces and ünïcödé"]
        #expect(try listing(a.bytes, in: dir) == expected)
        let verbose = try listing(a.bytes, in: dir, verbose: true)
        #expect(verbose.contains { $0.hasPrefix("crw-------") && $0.contains(" 5,") && $0.hasSuffix(" dev/console") }, "\(verbose)")

        let tree = try extract(a.bytes, in: dir)
        let fm = FileManager.default
        for (name, bytes, mode) in files {
            let path = tree.appendingPathComponent(name).path
            #expect(Array(try Data(contentsOf: URL(fileURLWithPath: path))) == bytes, "\(name)")
            let attributes = try fm.attributesOfItem(atPath: path)
            #expect((attributes[.posixPermissions] as? Int) == Int(mode), "\(name)")
            #expect((attributes[.modificationDate] as? Date) == Date(timeIntervalSince1970: 0), "\(name): mtime")
        }
        #expect(try fm.destinationOfSymbolicLink(atPath: tree.appendingPathComponent("a/link").path) == "b/c")
        var isDir: ObjCBool = false
        #expect(fm.fileExists(atPath: tree.appendingPathComponent("a/b/c").path, isDirectory: &isDir) && isDir.boolValue)
        #expect((try fm.attributesOfItem(atPath: tree.appendingPathComponent("a/b/c").path)[.posixPermissions] as? Int) == 0o700)
    }

    @Test("cpio: one entry byte for byte as newc has it, the trailer, 4-byte alignment, and the same bytes every time")
    func cpioLayout() throws {
        var a = CPIOArchive()
        try a.addFile("hello", contents: Array("ABC".utf8))
        // ino, mode (0100644), uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
        // rdevminor, namesize (with the NUL), check.
        let header = ["070701", "00000001", "000081A4", "00000000", "00000000", "00000001", "00000000",
                      "00000003", "00000000", "00000000", "00000000", "00000000", "00000006", "00000000"].joined()
        let trailer = ["070701", "00000000", "00000000", "00000000", "00000000", "00000001", "00000000",
                       "00000000", "00000000", "00000000", "00000000", "00000000", "0000000B", "00000000"].joined()
        var expected = Array(header.utf8) + Array("hello\0".utf8)
        expected += Array("ABC".utf8) + [0]
        expected += Array(trailer.utf8) + Array("TRAILER!!!\0".utf8) + [0, 0, 0]
        #expect(a.bytes == expected)
        #expect(a.bytes.count % 4 == 0)

        func build() throws -> [UInt8] {
            var b = CPIOArchive()
            try b.addCharacterDevice("/dev/console", major: 5, minor: 1)
            try b.addFile("/x/y", contents: [1, 2, 3, 4, 5])
            try b.addSymlink("/x/z", target: "y")
            return b.bytes
        }
        #expect(try build() == build())
        // Parents first: dev (inode 1, a directory, 040755, 2 links), then dev/console (020600,
        // 1 link, rdev 5:1), its name 12 bytes with the NUL.
        let text = String(decoding: try build().map { $0 == 0 ? UInt8(ascii: "|") : $0 }, as: UTF8.self)
        let dev = ["070701", "00000001", "000041ED", "00000000", "00000000", "00000002", "00000000",
                   "00000000", "00000000", "00000000", "00000000", "00000000", "00000004", "00000000", "dev|||"].joined()
        let console = ["070701", "00000002", "00002180", "00000000", "00000000", "00000001", "00000000",
                       "00000000", "00000000", "00000000", "00000005", "00000001", "0000000C", "00000000", "dev/console|"].joined()
        #expect(text.hasPrefix(dev), "\(text)")
        #expect(text.contains(console), "\(text)")
    }

    @Test("cpio: names, sizes and entries that do not fit are refused with the name and the reason")
    func cpioRefusals() throws {
        var a = CPIOArchive()
        try a.addFile("f", contents: [])
        try a.addDirectory("d")
        try a.addDirectory("d")   // again: fine
        let cases: [(String, (inout CPIOArchive) throws(ExecError) -> Void)] = [
            ("is not a name below the root", { a throws(ExecError) in try a.addFile("", contents: []) }),
            ("is not a name below the root", { a throws(ExecError) in try a.addDirectory("///") }),
            ("has an empty component", { a throws(ExecError) in try a.addFile("a//b", contents: []) }),
            ("has an empty component", { a throws(ExecError) in try a.addDirectory("a/") }),
            ("has a \".\" or \"..\" component", { a throws(ExecError) in try a.addFile("a/../b", contents: []) }),
            ("has a \".\" or \"..\" component", { a throws(ExecError) in try a.addFile("./a", contents: []) }),
            ("contains a NUL byte", { a throws(ExecError) in try a.addFile("a\0b", contents: []) }),
            ("more than the kernel's 4095", { a throws(ExecError) in try a.addFile(String(repeating: "n", count: 4096), contents: []) }),
            ("is already in the archive", { a throws(ExecError) in try a.addFile("f", contents: [1]) }),
            ("is already in the archive", { a throws(ExecError) in try a.addSymlink("d", target: "f") }),
            ("not as a directory", { a throws(ExecError) in try a.addDirectory("f") }),
            ("its parent \"f\" is in the archive, not as a directory", { a throws(ExecError) in try a.addFile("f/g", contents: []) }),
            ("12-bit major", { a throws(ExecError) in try a.addCharacterDevice("c", major: 4096, minor: 0) }),
            ("12-bit major", { a throws(ExecError) in try a.addCharacterDevice("c", major: 1, minor: 1 << 20) }),
            ("beyond the permissions", { a throws(ExecError) in try a.addFile("m", contents: [], mode: 0o10644) }),
            ("symlink target", { a throws(ExecError) in try a.addSymlink("l", target: "") }),
        ]
        for (reason, body) in cases {
            var copy = a
            let e = execError { () throws(ExecError) in try body(&copy) }
            #expect(e?.description.contains(reason) == true, "\(reason): got \(String(describing: e))")
            #expect(e?.description.hasPrefix("initramfs entry \"") == true)
        }
        // A name of exactly the limit is fine.
        var b = CPIOArchive()
        try b.addFile(String(repeating: "n", count: 4095), contents: [])
    }

    // MARK: exec.conf

    @Test("exec.conf: the exact bytes of a small spec")
    func encodingBytes() throws {
        let spec = ExecSpec(argv: ["echo", "hi"], env: ["PATH=/bin"], cwd: "/home", uid: 1000, gid: 100, groups: [27, 100],
                            rwShares: [.init(tag: "swiftvmm-rw0", path: "/out")], modulesDir: "/m", modules: ["/swiftvmm/modules/a.ko"])
        try spec.validate()
        let expected = "swiftvmm-exec\u{0}1\u{0}arg\u{0}echo\u{0}arg\u{0}hi\u{0}env\u{0}PATH=/bin\u{0}cwd\u{0}/home\u{0}"
            + "uid\u{0}1000\u{0}gid\u{0}100\u{0}groups\u{0}27,100\u{0}rw-tag\u{0}swiftvmm-rw0\u{0}rw-path\u{0}/out\u{0}"
            + "modules-dir\u{0}/m\u{0}module\u{0}/swiftvmm/modules/a.ko\u{0}"
        #expect(spec.encoded() == Array(expected.utf8))
        #expect(ExecSpec(argv: ["true"]).encoded()
                == Array("swiftvmm-exec\u{0}1\u{0}arg\u{0}true\u{0}cwd\u{0}/\u{0}uid\u{0}0\u{0}gid\u{0}0\u{0}groups\u{0}\u{0}".utf8))
    }

    @Test("exec.conf round-trips through the init's own parser (guests/init check-parse), odd bytes and all")
    func encodingRoundTrip() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let specs = [
            ExecSpec(argv: ["true"]),
            ExecSpec(argv: ["sh", "-c", "echo \"$HOME\" 'x'\\\n\ttab", "", "ünïcödé ✓", "=", "--", "\u{1}\u{7F}"],
                     env: ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/home/u", "EMPTY=", "EQ==a=b", "NL=line1\nline2"],
                     cwd: "/home/u/src/linux", uid: 4_294_967_294, gid: 0, groups: [0, 27, 4_294_967_294],
                     rwShares: [.init(tag: "swiftvmm-rw0", path: "/home/u/out"), .init(tag: String(repeating: "t", count: 36), path: "/tmp/a b")],
                     modulesDir: "/home/u/linux/mod/lib/modules/6.12.0",
                     modules: ["/swiftvmm/modules/virtio.ko", "/swiftvmm/modules/fuse.ko.xz", "/swiftvmm/modules/a-b.ko.zst",
                               "/swiftvmm/modules/c.ko.gz"]),
        ]
        for spec in specs {
            try spec.validate()
            let r = try GuestInit.parse(spec.encoded(), in: dir)
            #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
            #expect(r.lines == checkParseLines(spec))
        }
    }

    @Test("exec.conf: what the init refuses, swiftvmm refuses first, at the same limits")
    func encodingLimits() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let base = ExecSpec(argv: ["true"])
        // At the limits: both accept.
        var full = base
        full.argv = Array(repeating: "a", count: ExecSpec.Limits.arguments)
        full.env = Array(repeating: "A=b", count: ExecSpec.Limits.environment)
        full.groups = Array(repeating: 5, count: ExecSpec.Limits.groups)
        full.rwShares = (0..<ExecSpec.Limits.rwShares).map { .init(tag: ExecSpec.rwTag($0), path: "/s/\($0)") }
        full.modules = (0..<ExecSpec.Limits.modules).map { "/m/\($0).ko" }
        full.cwd = "/" + String(repeating: "p", count: ExecSpec.Limits.pathBytes - 1)
        try full.validate()
        let ok = try GuestInit.parse(full.encoded(), in: dir)
        #expect(ok.status == 0, "\(ok.stdout.prefix(500))")

        // One step over, or a value the init cannot use: (change, what Swift says, what the init says).
        let cases: [((inout ExecSpec) -> Void, String, String)] = [
            ({ $0.argv = [] }, "is empty: nothing to run", "no arg record: nothing to run"),
            ({ $0.argv = Array(repeating: "a", count: 4097) }, "more than 4096", "more than 4096 arguments"),
            ({ $0.env = Array(repeating: "A=b", count: 4097) }, "more than 4096", "more than 4096 environment strings"),
            ({ $0.env = ["NOEQUALS"] }, "is not NAME=VALUE", "\"NOEQUALS\" is not NAME=VALUE"),
            ({ $0.env = ["=x"] }, "is not NAME=VALUE", "\"=x\" is not NAME=VALUE"),
            ({ $0.cwd = "relative/dir" }, "is not an absolute path", "is not an absolute path"),
            ({ $0.cwd = "/a/../etc" }, "component", "has a \".\" or \"..\" component"),
            ({ $0.cwd = "/a/./b" }, "component", "has a \".\" or \"..\" component"),
            ({ $0.cwd = "/" + String(repeating: "p", count: 4095) }, "more than 4095", "is longer than 4095 bytes"),
            ({ $0.uid = UInt32.max }, "not a user", "\"4294967295\" is not a number from 0 to 4294967294"),
            ({ $0.gid = UInt32.max }, "not a group", "\"4294967295\" is not a number from 0 to 4294967294"),
            ({ $0.groups = [1, UInt32.max] }, "not a group", "is not a comma-separated list"),
            ({ $0.groups = Array(repeating: 1, count: 1025) }, "more than 1024", "more than 1024 groups"),
            ({ $0.rwShares = [.init(tag: String(repeating: "t", count: 37), path: "/x")] }, "is not 1 to 36 bytes", "is not 1 to 36 bytes long"),
            ({ $0.rwShares = [.init(tag: "", path: "/x")] }, "is not 1 to 36 bytes", "is not 1 to 36 bytes long"),
            ({ $0.rwShares = [.init(tag: "t", path: "/")] }, "over the root itself", "over the root itself"),
            ({ $0.rwShares = [.init(tag: "t", path: "x")] }, "is not an absolute path", "is not an absolute path"),
            ({ $0.rwShares = (0..<65).map { .init(tag: "t\($0)", path: "/s") } }, "more than 64", "more than 64 writable shares"),
            ({ $0.modulesDir = "lib/modules" }, "is not an absolute path", "is not an absolute path"),
            ({ $0.modules = ["/swiftvmm/modules/a.o"] }, "is not a .ko", "is not a .ko, .ko.xz, .ko.zst or .ko.gz file"),
            ({ $0.modules = ["/swiftvmm/modules/.ko"] }, "is not a .ko", "is not a .ko, .ko.xz, .ko.zst or .ko.gz file"),
            ({ $0.modules = (0..<257).map { "/m/\($0).ko" } }, "more than 256", "more than 256 modules"),
            ({ $0.argv = [String(repeating: "x", count: 1 << 20)] }, "more than the 1048576 the init reads", "is larger than 1048576 bytes"),
        ]
        for (i, (change, swiftSays, initSays)) in cases.enumerated() {
            var spec = base
            change(&spec)
            let e = execError { () throws(ExecError) in try spec.validate() }
            #expect(e?.description.contains(swiftSays) == true, "case \(i): Swift said \(String(describing: e))")
            let r = try GuestInit.parse(spec.encoded(), in: dir)
            #expect(r.status == 1 && r.stdout.hasPrefix("fail ") && r.stdout.contains(initSays),
                    "case \(i): the init said \(r.stdout.prefix(300))")
        }
        // A NUL cannot reach the file as part of a value: Swift refuses it.
        #expect(execError { () throws(ExecError) in try ExecSpec(argv: ["a\0b"]).validate() }?.description.contains("NUL") == true)
    }

    @Test("exec.conf: malformed files the init refuses, each with the record, its offset and the value")
    func malformedFiles() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let head: [(String, String)] = [("swiftvmm-exec", "1")]
        let good = confRecords(head + [("arg", "true")])
        let cases: [([UInt8], String)] = [
            ([], "fail the file is empty"),
            (Array(good.dropLast()), "fail record 2 (\"arg\") at byte 16: the value runs to the end of the file without its NUL (truncated?)"),
            (Array(good.dropLast(5)), "fail record 2 (\"arg\") at byte 16: the file ends before its value"),
            (confRecords(head) + Array("arg".utf8), "fail record 2 at byte 16: the key \"arg\" runs to the end of the file without its NUL"),
            (confRecords([("arg", "true")]), "fail the file does not start with a swiftvmm-exec record"),
            (confRecords([("swiftvmm-exec", "2"), ("arg", "x")]), "format version \"2\", but this init reads version 1"),
            (confRecords(head), "fail no arg record: nothing to run"),
            (confRecords(head + [("arg", "x"), ("argv", "y")]), "fail record 3 at byte 22: unknown key \"argv\""),
            (confRecords(head + [("arg", "x"), ("ar\u{1}g", "y")]), "unknown key \"ar\\x01g\""),
            (confRecords(head + [("arg", "x"), ("cwd", "/a"), ("cwd", "/b")]), "(cwd) at byte 29: given twice"),
            (confRecords(head + [("arg", "x"), ("uid", "")]), "\"\" is not a number"),
            (confRecords(head + [("arg", "x"), ("uid", "-1")]), "\"-1\" is not a number"),
            (confRecords(head + [("arg", "x"), ("uid", " 7")]), "\" 7\" is not a number"),
            (confRecords(head + [("arg", "x"), ("gid", "12345678901")]), "\"12345678901\" is not a number"),
            (confRecords(head + [("arg", "x"), ("groups", "1,")]), "\"1,\" is not a comma-separated list"),
            (confRecords(head + [("arg", "x"), ("groups", ",1")]), "\",1\" is not a comma-separated list"),
            (confRecords(head + [("arg", "x"), ("rw-tag", "t"), ("arg", "y")]),
             "(arg) at byte 31: the rw-tag \"t\" before it is not followed by its rw-path"),
            (confRecords(head + [("arg", "x"), ("rw-tag", "t")]), "fail the file ends after rw-tag \"t\", without its rw-path"),
            (confRecords(head + [("arg", "x"), ("rw-path", "/p")]), "(rw-path) at byte 22: not after an rw-tag record"),
            (confRecords(head + [("arg", "x"), ("modules-dir", "/a"), ("modules-dir", "/a")]), "given twice"),
        ]
        for (bytes, says) in cases {
            let r = try GuestInit.parse(bytes, in: dir)
            #expect(r.status == 1 && r.stdout.hasPrefix("fail ") && r.stdout.contains(says), "wanted \(says), got \(r.stdout)")
        }
        // Over the size limit, whatever it holds.
        let big = confRecords(head + [("arg", String(repeating: "x", count: ExecSpec.Limits.bytes))])
        let r = try GuestInit.parse(big, in: dir)
        #expect(r.status == 1 && r.stdout.contains("is larger than 1048576 bytes"), "\(r.stdout)")
    }

    @Test("the status line: status N (0-255) or fail MESSAGE, nothing else")
    func statusLine() {
        #expect(ExecStatus(line: Array("status 0\n".utf8)) == .exited(0))
        #expect(ExecStatus(line: Array("status 255".utf8)) == .exited(255))
        #expect(ExecStatus(line: Array("status 137\n".utf8)) == .exited(137))
        #expect(ExecStatus(line: Array("fail mount virtiofs: No such device\n".utf8)) == .failed("mount virtiofs: No such device"))
        for bad in ["status 256", "status -1", "status ", "status 1x", "status 0001", "status 1\nstatus 2", "Status 1", "", "\n",
                    "fail" + String(repeating: "x", count: 1100)] {
            #expect(ExecStatus(line: Array(bad.utf8)) == nil, "\(bad.prefix(20))")
        }
    }

    // MARK: kernel modules

    /// A modules directory with `dep` as modules.dep and `builtin` as modules.builtin (nil: none).
    func modulesTree(_ dep: String?, builtin: String? = nil, in dir: URL) throws -> String {
        let tree = dir.appendingPathComponent("lib/modules/6.99.0-test")
        try FileManager.default.createDirectory(at: tree, withIntermediateDirectories: true)
        if let dep { try dep.write(to: tree.appendingPathComponent("modules.dep"), atomically: true, encoding: .utf8) }
        if let builtin { try builtin.write(to: tree.appendingPathComponent("modules.builtin"), atomically: true, encoding: .utf8) }
        return tree.path
    }

    /// Every module comes after everything its modules.dep line names.
    func dependenciesFirst(_ load: [KernelModule], dep: [String: [String]]) -> Bool {
        var loaded = Set<String>()
        for m in load {
            guard (dep[m.name] ?? []).allSatisfy(loaded.contains) else { return false }
            loaded.insert(m.name)
        }
        return true
    }

    @Test("kernel modules: dependencies first and each once, built-in ones skipped, missing ones reported, '-' and '_' the same")
    func moduleOrder() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let tree = try modulesTree("""
            kernel/fs/fuse/virtiofs.ko.xz: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/fs/fuse/fuse.ko.zst
            kernel/fs/fuse/fuse.ko.zst:
            kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
            kernel/drivers/virtio/virtio.ko:
            kernel/drivers/virtio/virtio-pci.ko.gz: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko

            kernel/drivers/virtio/virtio_pci_modern_dev.ko:\r
            kernel/fs/overlayfs/overlay.ko:
            kernel/unrelated/other.ko: kernel/drivers/virtio/virtio.ko
            """, builtin: "kernel/drivers/char/virtio_console.ko\nkernel/fs/ext4/ext4.ko\n", in: dir)
        let r = try KernelModules.resolve(["virtio-pci", "virtio-console", "virtiofs", "fuse", "overlay", "nosuch", "virtiofs", "ext4"], in: tree)
        #expect(r.load.map(\.name) == ["virtio", "virtio_ring", "virtio_pci_modern_dev", "virtio_pci", "fuse", "virtiofs", "overlay"])
        #expect(dependenciesFirst(r.load, dep: ["virtiofs": ["virtio", "virtio_ring", "fuse"], "virtio_ring": ["virtio"],
                                               "virtio_pci": ["virtio_pci_modern_dev", "virtio", "virtio_ring"]]))
        #expect(r.builtIn == ["virtio_console", "ext4"])
        #expect(r.missing == ["nosuch"])
        #expect(r.directoryExists)
        #expect(r.problem == "nosuch: neither built into the kernel (modules.builtin) nor in \(tree)/modules.dep")
        let pci = try #require(r.load.first { $0.name == "virtio_pci" })
        #expect(pci.path == tree + "/kernel/drivers/virtio/virtio-pci.ko.gz")
        #expect(pci.relativePath == "kernel/drivers/virtio/virtio-pci.ko.gz" && pci.fileName == "virtio-pci.ko.gz")
        #expect(KernelModules.normalizedName("kernel/x/snd-hda-intel.ko.zst") == "snd_hda_intel")

        // Nothing missing: no problem to report.
        #expect(try KernelModules.resolve(["overlay"], in: tree).problem == nil)
    }

    @Test("kernel modules: no directory is a clear answer; a cycle, a dangling or malformed line, no modules.dep are errors")
    func moduleFailures() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }

        let none = try KernelModules.resolve(["virtio_pci", "virtio-console"], in: dir.appendingPathComponent("nowhere").path)
        #expect(!none.directoryExists && none.load.isEmpty && none.missing == ["virtio_pci", "virtio_console"])
        #expect(none.problem?.contains("does not exist, so virtio_pci, virtio_console must be built into the kernel") == true)

        func failure(_ dep: String?, _ wanted: [String] = ["a"]) throws -> String {
            let sub = dir.appendingPathComponent(UUID().uuidString)
            let tree = try modulesTree(dep, in: sub)
            return execError { () throws(ExecError) in _ = try KernelModules.resolve(wanted, in: tree) }?.description ?? "no error"
        }
        #expect(try failure("k/a.ko: k/b.ko\nk/b.ko: k/c.ko\nk/c.ko: k/a.ko\n")
                == "kernel modules depend on each other in a circle: a -> b -> c -> a")
        #expect(try failure("k/a.ko: k/a.ko\n") == "kernel modules depend on each other in a circle: a -> a")
        #expect(try failure("k/a.ko:\nk/b.ko: k/c.ko\n").hasSuffix("modules.dep:2: b depends on c, which has no line of its own"))
        #expect(try failure("k/a.ko\n").hasSuffix("modules.dep:1: no ':' after the module's path"))
        #expect(try failure("/lib/modules/x/k/a.ko:\n").contains("is not a path relative to the modules directory"))
        #expect(try failure("k/a.txt:\n").contains("\"k/a.txt\" is not a .ko, .ko.xz, .ko.zst or .ko.gz file"))
        #expect(try failure("k/.ko.xz:\n").contains("\"k/.ko.xz\" is not a .ko, .ko.xz, .ko.zst or .ko.gz file"))
        #expect(try failure("k/a.ko: ../../b.ko\n").contains("has an empty, \".\" or \"..\" component"))
        #expect(try failure("k/a.ko:\nother/a.ko:\n").hasSuffix("modules.dep:2: a has a line already (line 1)"))
        #expect(try failure(nil).hasSuffix("no modules.dep; generate it with depmod (`depmod -b BASE VERSION` for BASE/lib/modules/VERSION)"))
        let chain = (0..<70).map { "k/m\($0).ko: k/m\($0 + 1).ko" }.joined(separator: "\n") + "\nk/m70.ko:\n"
        #expect(try failure(chain, ["m0"]).hasPrefix("kernel module dependencies nest more than 64 deep: m0 -> m1"))

        // An index far beyond any real one is refused before it is read.
        let big = dir.appendingPathComponent("big")
        let bigTree = try modulesTree("", in: big)
        #expect(truncate(bigTree + "/modules.dep", off_t(KernelModules.maximumIndexBytes + 1)) == 0)
        let e = execError { () throws(ExecError) in _ = try KernelModules.resolve(["a"], in: bigTree) }
        #expect(e == .tooLarge(path: bigTree + "/modules.dep", size: KernelModules.maximumIndexBytes + 1, limit: KernelModules.maximumIndexBytes))
    }

    @Test("kernel modules: Debian's cloud kernel (modules.dep from depmod in scripts/fetch-debian-kernel) and its exec initramfs")
    func debianModules() throws {
        let tree = DebianKernel.folder.appendingPathComponent("cloud/modules").path
        let present = FileManager.default.fileExists(atPath: tree + "/modules.dep")
        if !present { Issue.record("\(tree)/modules.dep is missing: run scripts/fetch-debian-kernel (scripts/test does)") }
        try #require(present)
        let r = try KernelModules.resolve(ExecInitramfs.wantedModules, in: tree)
        #expect(r.missing.isEmpty && r.builtIn.isEmpty, "\(r)")
        #expect(Set(r.load.map(\.name)) == ["virtio", "virtio_ring", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
                                            "virtio_console", "fuse", "virtiofs", "overlay"])
        #expect(r.load.count == 9)
        // Debian 12's own dependencies, from its modules.dep.
        #expect(dependenciesFirst(r.load, dep: [
            "virtio_pci": ["virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio", "virtio_ring"],
            "virtio_console": ["virtio", "virtio_ring"], "virtiofs": ["virtio", "virtio_ring", "fuse"],
        ]))
        for m in r.load { #expect(FileManager.default.fileExists(atPath: m.path), "\(m.path)") }

        try GuestInit.require()
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let spec = ExecSpec(argv: ["uname", "-a"], env: ["PATH=/usr/bin:/bin"], modulesDir: tree)
        let image = try ExecInitramfs.build(initBinary: GuestInit.binary, spec: spec, modules: r.load)
        let x = try extract(image, in: dir)
        let parsed = try runProcess(GuestInit.checkParse, [x.appendingPathComponent("swiftvmm/exec.conf").path])
        #expect(parsed.lines.filter { $0.hasPrefix("module ") }
                == r.load.map { "module \"/swiftvmm/modules/\($0.fileName)\"" })
        for m in r.load {
            let packed = try Data(contentsOf: x.appendingPathComponent("swiftvmm/modules/\(m.fileName)"))
            #expect(packed == (try Data(contentsOf: URL(fileURLWithPath: m.path))), "\(m.fileName)")
            #expect(packed.prefix(4) == Data([0x7F, 0x45, 0x4C, 0x46]), "\(m.fileName) is not an ELF object")
        }
    }

    // MARK: the initramfs

    @Test("exec initramfs: /init, exec.conf, dev/console 5:1 and the modules in load order; check-parse reads its exec.conf")
    func initramfs() throws {
        try GuestInit.require()
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let tree = try modulesTree("k/b.ko.xz: k/a.ko\nk/a.ko:\n", in: dir.appendingPathComponent("mods"))
        try FileManager.default.createDirectory(atPath: tree + "/k", withIntermediateDirectories: true)
        try Data("module a".utf8).write(to: URL(fileURLWithPath: tree + "/k/a.ko"))
        try Data("module b, compressed".utf8).write(to: URL(fileURLWithPath: tree + "/k/b.ko.xz"))
        let r = try KernelModules.resolve(["b"], in: tree)
        let spec = ExecSpec(argv: ["make", "-j2"], env: ["PATH=/usr/bin", "HOME=/root"], cwd: "/src", uid: 1000, gid: 1000,
                            rwShares: [.init(tag: ExecSpec.rwTag(0), path: "/src/out")], modulesDir: tree)
        let image = try ExecInitramfs.build(initBinary: GuestInit.binary, spec: spec, modules: r.load)

        #expect(try listing(image, in: dir) == ["dev", "dev/console", "proc", "sys", "init", "swiftvmm", "swiftvmm/exec.conf",
                                                 "swiftvmm/modules", "swiftvmm/modules/a.ko", "swiftvmm/modules/b.ko.xz"])
        let verbose = try listing(image, in: dir, verbose: true)
        #expect(verbose.contains { $0.hasPrefix("crw-------") && $0.contains(" 5,") && $0.hasSuffix(" dev/console") }, "\(verbose)")
        #expect(verbose.contains { $0.hasPrefix("-rwxr-xr-x") && $0.hasSuffix(" init") }, "\(verbose)")

        let x = try extract(image, in: dir)
        #expect(try Data(contentsOf: x.appendingPathComponent("init")) == Data(contentsOf: URL(fileURLWithPath: GuestInit.binary)))
        #expect(try Data(contentsOf: x.appendingPathComponent("swiftvmm/modules/b.ko.xz")) == Data("module b, compressed".utf8))
        var expected = spec
        expected.modules = ["/swiftvmm/modules/a.ko", "/swiftvmm/modules/b.ko.xz"]
        let parsed = try runProcess(GuestInit.checkParse, [x.appendingPathComponent("swiftvmm/exec.conf").path])
        #expect(parsed.status == 0 && parsed.lines == checkParseLines(expected), "\(parsed.stdout)")
    }

    @Test("exec initramfs: an init that is not a static x86-64 executable, or two modules with one file name, are refused")
    func initramfsRefusals() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let spec = ExecSpec(argv: ["true"])
        func refusal(_ initBinary: String, _ modules: [KernelModule] = []) -> String {
            execError { () throws(ExecError) in _ = try ExecInitramfs.build(initBinary: initBinary, spec: spec, modules: modules) }?
                .description ?? "no error"
        }
        let text = dir.appendingPathComponent("init.sh")
        try Data("#!/bin/sh\n".utf8).write(to: text)
        #expect(refusal(text.path) == "\(text.path): not an ELF file; the exec init must be a static x86-64 executable (make -C guests/init)")
        #expect(refusal("/bin/true").hasSuffix("it is dynamically linked (it has a PT_INTERP program header); the exec init must be a static x86-64 executable (make -C guests/init)"))
        #expect(refusal(dir.appendingPathComponent("absent").path) == dir.appendingPathComponent("absent").path + ": No such file or directory")
        #expect(refusal(dir.path) == dir.path + ": Is a directory")
        // A header whose program headers point past the end of the file.
        var elf = [UInt8](repeating: 0, count: 64)
        elf[0...5] = [0x7F, 0x45, 0x4C, 0x46, 2, 1]
        elf[16] = 2; elf[18] = 62; elf[32] = 0xFF; elf[33] = 0xFF; elf[54] = 56; elf[56] = 1
        let broken = dir.appendingPathComponent("broken")
        try Data(elf).write(to: broken)
        #expect(refusal(broken.path).contains("its program headers (1 of 56 bytes at 65535) are not inside the file"))

        try GuestInit.require()
        let m1 = KernelModule(name: "a", path: "/x/one/a.ko", relativePath: "one/a.ko")
        let m2 = KernelModule(name: "a", path: "/x/two/a.ko", relativePath: "two/a.ko")
        #expect(refusal(GuestInit.binary, [m1, m2]) == "initramfs entry \"/swiftvmm/modules/a.ko\": two modules have this file name: /x/one/a.ko and /x/two/a.ko")
        #expect(refusal(GuestInit.binary, [m1]) == "/x/one/a.ko: No such file or directory")
    }

    // MARK: the init itself, as far as a host can run it

    @Test("the init refuses to run as anything but PID 1; as PID 1 of a fresh PID and mount namespace it names the missing ports, then powers off")
    func initAsPID1() throws {
        try GuestInit.require()
        let direct = try runProcess(GuestInit.binary, [])
        #expect(direct.status == 64 && direct.stderr.contains("runs only as PID 1 (this is PID "), "\(direct.stderr)")

        // In its own namespaces, chrooted into a copy of the initramfs, the init mounts its
        // devtmpfs, proc and sysfs privately, looks for the ports for 10 s, reports, and
        // powers off, which in a child PID namespace only ends that namespace (reboot(2):
        // its init gets SIGINT). No modules: finit_module would reach the host's kernel.
        guard getuid() == 0 else {
            Issue.record("running the init as PID 1 of a new PID namespace needs root (unshare --pid)")
            return
        }
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        func runInNamespace(_ conf: [UInt8]) throws -> RunResult {
            let root = dir.appendingPathComponent(UUID().uuidString)
            try FileManager.default.createDirectory(at: root.appendingPathComponent("swiftvmm"), withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: GuestInit.binary, toPath: root.appendingPathComponent("init").path)
            try Data(conf).write(to: root.appendingPathComponent("swiftvmm/exec.conf"))
            return try runProcess("/usr/bin/unshare", ["--pid", "--fork", "--mount", "--propagation", "private",
                                                       "--root=\(root.path)", "/init"], timeout: 60)
        }
        let start = Date()
        let noPorts = try runInNamespace(ExecSpec(argv: ["/bin/true"]).encoded())
        let took = Date().timeIntervalSince(start)
        #expect(noPorts.stderr.contains("swiftvmm-init: no virtio console port named swiftvmm.stdin, swiftvmm.stdout, swiftvmm.stderr, swiftvmm.status after 10 s: "),
                "\(noPorts.stderr)")
        #expect(noPorts.stderr.contains("CONFIG_") || noPorts.stderr.contains("no port has this name"), "\(noPorts.stderr)")
        #expect(took >= 9.5 && took < 30, "\(took) s")
        #expect(noPorts.status == SIGINT, "\(noPorts.status)")

        let bad = try runInNamespace(confRecords([("swiftvmm-exec", "1"), ("arg", "x"), ("uid", "root")]))
        #expect(bad.stderr.contains("swiftvmm-init: /swiftvmm/exec.conf: record 3 (uid) at byte 22: \"root\" is not a number from 0 to 4294967294"),
                "\(bad.stderr)")
        #expect(bad.status == SIGINT, "\(bad.status)")
    }
}
