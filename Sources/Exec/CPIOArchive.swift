/// A cpio archive in the "newc" format, the one the kernel unpacks as an initramfs
/// (Documentation/driver-api/early-userspace/buffer-format.rst): per entry a 110-byte ASCII
/// header (the magic "070701" and thirteen 8-digit hex fields), the name with its NUL padded
/// to a multiple of 4, the data padded to a multiple of 4; the entry "TRAILER!!!" ends it.
///
/// The archive is deterministic: every mtime, uid and gid is 0 and inodes are numbered in the
/// order entries are added, so the same inputs give the same bytes. Names are stored
/// relative ("dev/console"), as the kernel's own gen_init_cpio does, so that a cpio run by
/// hand never writes to the host's /. Every entry's parent directories are added before it
/// (mode 0755) if they are not there yet: the kernel's unpacker creates no parents.
public struct CPIOArchive: Sendable {
    private enum Kind { case directory, file, symlink, device }

    private var output: [UInt8] = []
    private var kinds: [String: Kind] = [:]
    private var nextInode: UInt32 = 1

    /// Kernel limits: names up to PATH_MAX with their NUL; device numbers as MKDEV packs them.
    public static let maximumNameBytes = 4095
    public static let maximumFileBytes = Int(UInt32.max)

    public init() {}

    /// Every entry added so far, in order, and the trailer.
    public var bytes: [UInt8] {
        var out = output
        Self.appendEntry(to: &out, name: "TRAILER!!!", inode: 0, mode: 0, links: 1, rdev: (0, 0), data: [])
        return out
    }

    /// A directory and any missing parents. Adding one that is there is not an error.
    public mutating func addDirectory(_ path: String, mode: UInt32 = 0o755) throws(ExecError) {
        let name = try Self.normalized(path)
        try Self.checkMode(mode, path)
        if let existing = kinds[name] {
            guard existing == .directory else { throw .archive(name: path, reason: "is already in the archive, not as a directory") }
            return
        }
        try addParents(of: name, as: path)
        append(name, kind: .directory, type: 0o040000, mode: mode, links: 2, data: [])
    }

    public mutating func addFile(_ path: String, contents: [UInt8], mode: UInt32 = 0o644) throws(ExecError) {
        guard contents.count <= Self.maximumFileBytes else {
            throw .archive(name: path, reason: "\(contents.count) bytes do not fit newc's 32-bit size field")
        }
        try addNew(path, kind: .file, type: 0o100000, mode: mode, data: contents)
    }

    /// A symbolic link; its target is stored as is (relative or absolute, not checked).
    public mutating func addSymlink(_ path: String, target: String) throws(ExecError) {
        let bytes = Array(target.utf8)
        guard !bytes.isEmpty, bytes.count <= Self.maximumNameBytes, !bytes.contains(0) else {
            throw .archive(name: path, reason: "symlink target \(quote(target)) is not 1 to \(Self.maximumNameBytes) bytes without NUL")
        }
        try addNew(path, kind: .symlink, type: 0o120000, mode: 0o777, data: bytes)
    }

    /// A character device node, such as dev/console (5:1), which the kernel opens for PID 1's
    /// stdin, stdout and stderr before any devtmpfs exists.
    public mutating func addCharacterDevice(_ path: String, major: UInt32, minor: UInt32, mode: UInt32 = 0o600) throws(ExecError) {
        // MKDEV: 12 bits of major, 20 of minor.
        guard major < 1 << 12, minor < 1 << 20 else {
            throw .archive(name: path, reason: "device \(major):\(minor) does not fit Linux's 12-bit major, 20-bit minor")
        }
        try addNew(path, kind: .device, type: 0o020000, mode: mode, rdev: (major, minor), data: [])
    }

    private mutating func addNew(_ path: String, kind: Kind, type: UInt32, mode: UInt32,
                                 rdev: (UInt32, UInt32) = (0, 0), data: [UInt8]) throws(ExecError) {
        let name = try Self.normalized(path)
        try Self.checkMode(mode, path)
        guard kinds[name] == nil else { throw .archive(name: path, reason: "is already in the archive") }
        try addParents(of: name, as: path)
        append(name, kind: kind, type: type, mode: mode, links: 1, rdev: rdev, data: data)
    }

    private mutating func addParents(of name: String, as path: String) throws(ExecError) {
        let components = name.split(separator: "/")
        var prefix = ""
        for c in components.dropLast() {
            prefix += prefix.isEmpty ? String(c) : "/" + c
            switch kinds[prefix] {
            case .directory: continue
            case nil: append(prefix, kind: .directory, type: 0o040000, mode: 0o755, links: 2, data: [])
            default: throw .archive(name: path, reason: "its parent \(quote(prefix)) is in the archive, not as a directory")
            }
        }
    }

    private mutating func append(_ name: String, kind: Kind, type: UInt32, mode: UInt32,
                                 links: UInt32, rdev: (UInt32, UInt32) = (0, 0), data: [UInt8]) {
        kinds[name] = kind
        Self.appendEntry(to: &output, name: name, inode: nextInode, mode: type | mode, links: links, rdev: rdev, data: data)
        nextInode += 1
    }

    /// The type bits come from the kind of entry; a mode carries only permissions.
    private static func checkMode(_ mode: UInt32, _ path: String) throws(ExecError) {
        guard mode <= 0o7777 else {
            throw .archive(name: path, reason: "mode \(String(mode, radix: 8)) has bits beyond the permissions (7777)")
        }
    }

    /// "/a/b" and "a/b" are the same entry, "a/b"; empty, ".", ".." and empty components are
    /// refused rather than guessed at.
    static func normalized(_ path: String) throws(ExecError) -> String {
        let bytes = Array(path.utf8)
        let relative = bytes.drop(while: { $0 == UInt8(ascii: "/") })
        guard !relative.isEmpty else { throw .archive(name: path, reason: "is not a name below the root") }
        guard !relative.contains(0) else { throw .archive(name: path, reason: "contains a NUL byte") }
        guard relative.count <= maximumNameBytes else {
            throw .archive(name: path, reason: "is \(relative.count) bytes, more than the kernel's \(maximumNameBytes)")
        }
        let components = relative.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
        for c in components {
            if c.isEmpty { throw .archive(name: path, reason: "has an empty component") }
            if c.elementsEqual(".".utf8) || c.elementsEqual("..".utf8) {
                throw .archive(name: path, reason: "has a \".\" or \"..\" component")
            }
        }
        return String(decoding: relative, as: UTF8.self)
    }

    private static func appendEntry(to out: inout [UInt8], name: String, inode: UInt32, mode: UInt32, links: UInt32,
                                    rdev: (UInt32, UInt32), data: [UInt8]) {
        let fields: [UInt32] = [
            inode, mode, 0 /* uid */, 0 /* gid */, links, 0 /* mtime */, UInt32(data.count),
            0, 0 /* the archive's own device: unused */, rdev.0, rdev.1,
            UInt32(name.utf8.count + 1) /* namesize, with the NUL */, 0 /* check: newc has none */,
        ]
        out += "070701".utf8
        for f in fields { out += hex8(f) }
        out += name.utf8
        out.append(0)
        pad(&out)
        out += data
        pad(&out)
    }

    private static func hex8(_ v: UInt32) -> [UInt8] {
        let digits = Array("0123456789ABCDEF".utf8)
        return (0..<8).map { digits[Int((v >> (28 - 4 * UInt32($0))) & 0xF)] }
    }

    private static func pad(_ out: inout [UInt8]) {
        while out.count % 4 != 0 { out.append(0) }
    }
}
