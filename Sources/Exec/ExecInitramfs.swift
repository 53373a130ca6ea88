/// The initramfs `swiftvmm exec` boots, built in memory: the bundled init (guests/init) as
/// /init, what to run in /swiftvmm/exec.conf, the kernel modules the init loads before it can
/// reach the host, and the one device node the kernel needs before any devtmpfs exists.
///
///     dev/console              5:1, PID 1's stdin, stdout and stderr until /dev is mounted
///     proc/ sys/               mount points
///     init                     the static init
///     swiftvmm/exec.conf       ExecSpec.encoded()
///     swiftvmm/modules/NAME    each module, by its file name, in spec.modules in load order
///
/// Uncompressed: every kernel with initramfs support unpacks a plain cpio, whichever
/// decompressors it was built with.
public enum ExecInitramfs {
    public static let configPath = "/swiftvmm/exec.conf"
    public static let modulesDirectory = "/swiftvmm/modules"
    /// What a kernel needs to reach the host in exec: the PCI transport, the console ports,
    /// the shared file systems and the overlay on them (fuse comes with virtiofs, but a kernel
    /// may have fuse as a module and virtiofs built in).
    public static let wantedModules = ["virtio_pci", "virtio_console", "virtiofs", "fuse", "overlay"]
    public static let maximumInitBytes = 64 << 20
    public static let maximumModuleBytes = 64 << 20

    /// The archive's bytes. `spec.modules` is replaced by where `modules` are put, in the
    /// order given (dependencies first, as `KernelModules.resolve` returns them).
    public static func build(initBinary: String, spec: ExecSpec, modules: [KernelModule]) throws(ExecError) -> [UInt8] {
        let initBytes = try readWholeFile(initBinary, limit: maximumInitBytes)
        if let problem = staticExecutableProblem(initBytes) {
            throw .notAStaticExecutable(path: initBinary, reason: problem)
        }
        var spec = spec
        var placed: [String: String] = [:]
        spec.modules = []
        for m in modules {
            let inArchive = modulesDirectory + "/" + m.fileName
            if let other = placed[inArchive] {
                throw .archive(name: inArchive, reason: "two modules have this file name: \(other) and \(m.path)")
            }
            placed[inArchive] = m.path
            spec.modules.append(inArchive)
        }
        try spec.validate()

        var archive = CPIOArchive()
        try archive.addCharacterDevice("/dev/console", major: 5, minor: 1)
        try archive.addDirectory("/proc")
        try archive.addDirectory("/sys")
        try archive.addFile("/init", contents: initBytes, mode: 0o755)
        try archive.addFile(configPath, contents: spec.encoded())
        try archive.addDirectory(modulesDirectory)
        for (m, inArchive) in zip(modules, spec.modules) {
            try archive.addFile(inArchive, contents: try readWholeFile(m.path, limit: maximumModuleBytes))
        }
        return archive.bytes
    }

    /// Nil if `bytes` is an x86-64 ELF executable that needs no program interpreter (the
    /// initramfs has no ld.so: the kernel would say only "Failed to execute /init (error -2)"),
    /// else what is wrong with it.
    static func staticExecutableProblem(_ bytes: [UInt8]) -> String? {
        func le(_ at: Int, _ n: Int) -> UInt64 {
            (0..<n).reduce(UInt64(0)) { $0 | UInt64(bytes[at + $1]) << (8 * UInt64($1)) }
        }
        guard bytes.count >= 64, bytes[0..<4].elementsEqual([0x7F, 0x45, 0x4C, 0x46]) else { return "not an ELF file" }
        guard bytes[4] == 2, bytes[5] == 1, le(18, 2) == 62 else { return "not a 64-bit little-endian x86-64 ELF file" }
        let type = le(16, 2)
        guard type == 2 || type == 3 else { return "ELF type \(type) is not an executable" }
        let (phoff, phentsize, phnum) = (le(32, 8), le(54, 2), le(56, 2))
        // Each program header's p_type is its first 4 bytes; all of them must lie in the file.
        guard phentsize >= 56, phoff <= UInt64(bytes.count),
              phnum * phentsize <= UInt64(bytes.count) - phoff else {
            return "its program headers (\(phnum) of \(phentsize) bytes at \(phoff)) are not inside the file"
        }
        let PT_INTERP: UInt64 = 3
        for i in 0..<phnum where le(Int(phoff + i * phentsize), 4) == PT_INTERP {
            return "it is dynamically linked (it has a PT_INTERP program header)"
        }
        return nil
    }
}
