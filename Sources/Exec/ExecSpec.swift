/// What `swiftvmm exec` runs in the guest and how: the bundled init (guests/init) reads it
/// from /swiftvmm/exec.conf in the initramfs.
///
/// The file is a sequence of records, a key and a value each ending in a NUL byte:
///
///     swiftvmm-exec\0 1\0            always first: the format and its version
///     arg\0 ARG\0                    one per argument, in order; at least one (argv[0])
///     env\0 NAME=VALUE\0             one per environment string: the whole environment
///     cwd\0 PATH\0                   the working directory (default /)
///     uid\0 N\0   gid\0 N\0          decimal, 0...4294967294 (default 0)
///     groups\0 N,N,...\0             supplementary groups, "" for none (the default)
///     rw-tag\0 TAG\0 rw-path\0 PATH\0    a writable virtio-fs share and where it goes;
///                                    the two records always together, in this order
///     modules-dir\0 PATH\0           bound onto /lib/modules/$(uname -r) in the guest
///     module\0 PATH\0                a module in the initramfs, in load order
///
/// NUL is the one byte no argument, environment string or path can hold, so nothing needs
/// quoting and the init's parser is a loop over memchr. Paths are absolute, without "." or
/// ".." components (they are joined to mount points). guests/init/README.md documents the
/// same format; guests/init/conf.c parses it with the same limits (`Limits`), and the tests
/// feed `encoded()` through that parser.
public struct ExecSpec: Equatable, Sendable {
    /// A host directory shared writable with virtio-fs under `tag`, mounted at `path`
    /// (the same path as on the host).
    public struct Share: Equatable, Sendable {
        public var tag: String
        public var path: String
        public init(tag: String, path: String) { self.tag = tag; self.path = path }
    }

    public var argv: [String]
    /// "NAME=VALUE" strings: exactly the command's environment (PATH included).
    public var env: [String]
    public var cwd: String
    public var uid: UInt32
    public var gid: UInt32
    public var groups: [UInt32]
    public var rwShares: [Share]
    public var modulesDir: String?
    /// Paths inside the initramfs, in load order. `ExecInitramfs.build` fills these in.
    public var modules: [String]

    public init(argv: [String], env: [String] = [], cwd: String = "/", uid: UInt32 = 0, gid: UInt32 = 0,
                groups: [UInt32] = [], rwShares: [Share] = [], modulesDir: String? = nil, modules: [String] = []) {
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.rwShares = rwShares
        self.modulesDir = modulesDir
        self.modules = modules
    }

    /// The limits the init enforces (CONF_MAX_* in guests/init/conf.h): checked here first so
    /// that a spec the init would refuse fails before a VM is started.
    public enum Limits {
        public static let bytes = 1 << 20
        public static let arguments = 4096
        public static let environment = 4096
        public static let groups = 1024
        public static let rwShares = 64
        public static let modules = 256
        public static let pathBytes = 4095
        /// The tag field of a virtio-fs device's configuration.
        public static let tagBytes = 36
    }

    public static let magicKey = "swiftvmm-exec"
    public static let formatVersion = "1"

    /// The virtio-fs tag of the host's / (read-only) and of the n-th writable share.
    public static let rootTag = "swiftvmm-root"
    public static func rwTag(_ index: Int) -> String { "swiftvmm-rw\(index)" }

    /// The virtio-console ports the init looks up by name in /sys/class/virtio-ports.
    public enum Port: String, CaseIterable, Sendable {
        case stdin = "swiftvmm.stdin"
        case stdout = "swiftvmm.stdout"
        case stderr = "swiftvmm.stderr"
        case status = "swiftvmm.status"
    }

    /// Module files the init can load: the kernel decompresses the last three itself.
    public static let moduleSuffixes = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]

    /// Whether the last component of `path` is a name followed by one of `moduleSuffixes`.
    public static func isModuleFileName(_ path: String) -> Bool {
        let name = path.split(separator: "/", omittingEmptySubsequences: false).last ?? ""
        return moduleSuffixes.contains { name.hasSuffix($0) && name.utf8.count > $0.utf8.count }
    }

    /// Everything the init would refuse, refused here with the field and the value.
    public func validate() throws(ExecError) {
        guard !argv.isEmpty else { throw .invalidSpec(what: "the command", reason: "is empty: nothing to run") }
        guard argv.count <= Limits.arguments else {
            throw .invalidSpec(what: "the command", reason: "has \(argv.count) arguments, more than \(Limits.arguments)")
        }
        for (i, a) in argv.enumerated() where a.utf8.contains(0) {
            throw .invalidSpec(what: "argument \(i)", reason: "\(quote(a)) contains a NUL byte")
        }
        guard env.count <= Limits.environment else {
            throw .invalidSpec(what: "the environment", reason: "has \(env.count) strings, more than \(Limits.environment)")
        }
        for e in env {
            guard !e.utf8.contains(0) else { throw .invalidSpec(what: "environment string \(quote(e))", reason: "contains a NUL byte") }
            guard let eq = e.utf8.firstIndex(of: UInt8(ascii: "=")), eq != e.utf8.startIndex else {
                throw .invalidSpec(what: "environment string \(quote(e))", reason: "is not NAME=VALUE")
            }
        }
        try Self.checkPath(cwd, "the working directory")
        guard uid != UInt32.max else { throw .invalidSpec(what: "uid", reason: "4294967295 is (uid_t)-1, not a user") }
        guard gid != UInt32.max else { throw .invalidSpec(what: "gid", reason: "4294967295 is (gid_t)-1, not a group") }
        guard groups.count <= Limits.groups else {
            throw .invalidSpec(what: "the groups", reason: "\(groups.count) of them, more than \(Limits.groups)")
        }
        guard !groups.contains(UInt32.max) else { throw .invalidSpec(what: "the groups", reason: "4294967295 is (gid_t)-1, not a group") }
        guard rwShares.count <= Limits.rwShares else {
            throw .invalidSpec(what: "the writable shares", reason: "\(rwShares.count) of them, more than \(Limits.rwShares)")
        }
        for (i, share) in rwShares.enumerated() {
            let n = share.tag.utf8.count
            guard n >= 1, n <= Limits.tagBytes, !share.tag.utf8.contains(0) else {
                throw .invalidSpec(what: "writable share \(i)'s tag", reason: "\(quote(share.tag)) is not 1 to \(Limits.tagBytes) bytes without NUL")
            }
            try Self.checkPath(share.path, "writable share \(i)")
            guard share.path.utf8.contains(where: { $0 != UInt8(ascii: "/") }) else {
                throw .invalidSpec(what: "writable share \(i)", reason: "cannot be mounted over the root itself; share a directory below it")
            }
        }
        if let modulesDir { try Self.checkPath(modulesDir, "the modules directory") }
        guard modules.count <= Limits.modules else {
            throw .invalidSpec(what: "the modules", reason: "\(modules.count) of them, more than \(Limits.modules)")
        }
        for m in modules {
            try Self.checkPath(m, "module")
            guard Self.isModuleFileName(m) else {
                throw .invalidSpec(what: "module \(quote(m))", reason: "is not a .ko, .ko.xz, .ko.zst or .ko.gz file")
            }
        }
        let size = encodedSize
        guard size <= Limits.bytes else {
            throw .invalidSpec(what: "the command and its environment", reason: "take \(size) bytes, more than the \(Limits.bytes) the init reads")
        }
    }

    /// Absolute, at most `Limits.pathBytes` bytes, no NUL, no "." or ".." component.
    static func checkPath(_ path: String, _ what: String) throws(ExecError) {
        let bytes = Array(path.utf8)
        guard bytes.first == UInt8(ascii: "/") else { throw .invalidSpec(what: what, reason: "\(quote(path)) is not an absolute path") }
        guard bytes.count <= Limits.pathBytes else {
            throw .invalidSpec(what: what, reason: "\(quote(path)) is \(bytes.count) bytes, more than \(Limits.pathBytes)")
        }
        guard !bytes.contains(0) else { throw .invalidSpec(what: what, reason: "\(quote(path)) contains a NUL byte") }
        let components = bytes.split(separator: UInt8(ascii: "/"))
        guard !components.contains(where: { $0.elementsEqual(".".utf8) || $0.elementsEqual("..".utf8) }) else {
            throw .invalidSpec(what: what, reason: "\(quote(path)) has a \".\" or \"..\" component")
        }
    }

    /// The records, in the order above. Call `validate()` first: what this writes for an
    /// invalid spec is refused by the init (with a message), not run.
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(encodedSize)
        forEachRecord { key, value in
            out += key.utf8
            out.append(0)
            out += value.utf8
            out.append(0)
        }
        return out
    }

    var encodedSize: Int {
        var n = 0
        forEachRecord { key, value in n += key.utf8.count + value.utf8.count + 2 }
        return n
    }

    private func forEachRecord(_ body: (String, String) -> Void) {
        body(Self.magicKey, Self.formatVersion)
        for a in argv { body("arg", a) }
        for e in env { body("env", e) }
        body("cwd", cwd)
        body("uid", String(uid))
        body("gid", String(gid))
        body("groups", groups.map { String($0) }.joined(separator: ","))
        for share in rwShares {
            body("rw-tag", share.tag)
            body("rw-path", share.path)
        }
        if let modulesDir { body("modules-dir", modulesDir) }
        for m in modules { body("module", m) }
    }
}

/// The one line the init writes on the status port: `status N\n` with the command's exit
/// status (128 + the signal if one ended it), or `fail MESSAGE\n` if the guest could not be
/// set up to run it.
public enum ExecStatus: Equatable, Sendable {
    case exited(Int32)
    case failed(String)

    /// The longest line the init writes (its message buffer), with room to spare.
    public static let maximumLineBytes = 1024

    /// `line` with or without its newline; nil for anything the init does not write.
    public init?(line: some Collection<UInt8>) {
        var bytes = Array(line.prefix(Self.maximumLineBytes + 1))
        guard bytes.count <= Self.maximumLineBytes else { return nil }
        if bytes.last == UInt8(ascii: "\n") { bytes.removeLast() }
        guard !bytes.contains(UInt8(ascii: "\n")) else { return nil }
        if bytes.starts(with: "status ".utf8) {
            let digits = bytes.dropFirst(7)
            guard (1...3).contains(digits.count), digits.allSatisfy({ (0x30...0x39).contains($0) }) else { return nil }
            let value = digits.reduce(0) { $0 * 10 + Int32($1 - 0x30) }
            guard value <= 255 else { return nil }
            self = .exited(value)
        } else if bytes.starts(with: "fail ".utf8) {
            self = .failed(String(decoding: bytes.dropFirst(5), as: UTF8.self))
        } else {
            return nil
        }
    }
}
