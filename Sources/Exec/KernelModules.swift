import Glibc

/// A module file to put in the initramfs and load.
public struct KernelModule: Equatable, Sendable {
    /// As the kernel knows it: the file name without its suffix, '-' as '_' ("virtio_pci").
    public let name: String
    /// The file on the host.
    public let path: String
    /// As modules.dep lists it, relative to the modules directory ("kernel/drivers/...").
    public let relativePath: String

    public init(name: String, path: String, relativePath: String) {
        self.name = name
        self.path = path
        self.relativePath = relativePath
    }

    /// The last path component, suffix included ("virtio_pci.ko.xz").
    public var fileName: String { String(relativePath.split(separator: "/").last ?? Substring(relativePath)) }
}

/// What `KernelModules.resolve` found for the modules asked for.
public struct ModuleResolution: Equatable, Sendable {
    public let directory: String
    /// False when the modules directory does not exist: a kernel built with everything in it
    /// (swiftvmm's test kernel) may have none, and then nothing can be said about the modules.
    public let directoryExists: Bool
    /// The files to load, dependencies first, each once.
    public var load: [KernelModule] = []
    /// Wanted modules the kernel has built in (modules.builtin): nothing to load.
    public var builtIn: [String] = []
    /// Wanted modules that are neither built in nor in modules.dep. Whether that is fatal is
    /// the caller's to say: the kernel may have them built in without a modules directory.
    public var missing: [String] = []

    /// One line for the user when something wanted was not found, else nil.
    public var problem: String? {
        guard !missing.isEmpty else { return nil }
        let names = missing.joined(separator: ", ")
        if !directoryExists {
            return "\(directory) does not exist, so \(names) must be built into the kernel (or give --modules=DIR)"
        }
        return "\(names): neither built into the kernel (modules.builtin) nor in \(directory)/modules.dep"
    }
}

/// Which kernel modules to load, and in what order, from a modules directory
/// (/lib/modules/VERSION, or what --modules names) as depmod leaves it.
///
/// modules.dep has a line per module, "path: dependency dependency ...", listing every module
/// it needs, directly or not; modules.builtin lists, one path a line, the modules compiled into
/// the kernel. Module names are file names without ".ko" and a compression suffix, and
/// '-' and '_' are the same in them (the kernel says "virtio_pci" for virtio-pci.ko too).
public enum KernelModules {
    /// The index files are a few hundred KiB on a distribution kernel with thousands of modules.
    public static let maximumIndexBytes = 16 << 20
    /// Real dependency chains are a handful deep (virtiofs -> fuse, virtio -> ...).
    public static let maximumDepth = 64

    /// "virtio-pci", "virtio_pci.ko.xz" or "kernel/drivers/virtio/virtio_pci.ko" -> "virtio_pci".
    public static func normalizedName(_ nameOrPath: String) -> String {
        var name = Substring(nameOrPath.split(separator: "/", omittingEmptySubsequences: false).last ?? "")
        for suffix in ExecSpec.moduleSuffixes.reversed() where name.hasSuffix(suffix) {
            name = name.dropLast(suffix.count)
            break
        }
        return String(name.map { $0 == "-" ? "_" : $0 })
    }

    /// The modules to load for `wanted`, from `directory`. Throws for a directory that exists
    /// but cannot be used (no modules.dep, a malformed line, a dependency cycle).
    public static func resolve(_ wanted: [String], in directory: String) throws(ExecError) -> ModuleResolution {
        var result = ModuleResolution(directory: directory, directoryExists: isDirectory(directory))
        var seen = Set<String>()
        let names = wanted.map(normalizedName).filter { seen.insert($0).inserted }
        guard result.directoryExists else {
            result.missing = names
            return result
        }
        let index = try Index(directory: directory)
        var order = Order(index: index)
        for name in names {
            if index.builtIn.contains(name) {
                result.builtIn.append(name)
            } else if index.entries[name] != nil {
                try order.visit(name, chain: [])
            } else {
                result.missing.append(name)
            }
        }
        result.load = order.load
        return result
    }

    private static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// modules.dep and modules.builtin, parsed.
    struct Index {
        struct Entry {
            let module: KernelModule
            let line: Int
            /// Names, as listed.
            let dependencies: [String]
        }
        var entries: [String: Entry] = [:]
        var builtIn = Set<String>()

        init(directory: String) throws(ExecError) {
            let depPath = directory + "/modules.dep"
            let dep: [UInt8]
            do {
                dep = try readWholeFile(depPath, limit: KernelModules.maximumIndexBytes)
            } catch .unreadable(_, ENOENT) {
                throw .noModulesDep(directory: directory)
            }
            for (number, line) in Self.lines(dep) {
                guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else {
                    throw .modulesIndex(path: depPath, line: number, reason: "no ':' after the module's path")
                }
                let path = try Self.modulePath(line[..<colon], depPath, number)
                let dependencies = try line[(colon + 1)...].split(separator: UInt8(ascii: " "))
                    .map { (d) throws(ExecError) in KernelModules.normalizedName(try Self.modulePath(d, depPath, number)) }
                let name = KernelModules.normalizedName(path)
                guard entries[name] == nil else {
                    throw .modulesIndex(path: depPath, line: number, reason: "\(name) has a line already (line \(entries[name]!.line))")
                }
                entries[name] = Entry(module: KernelModule(name: name, path: directory + "/" + path, relativePath: path),
                                      line: number, dependencies: dependencies)
            }
            // A dependency without a line of its own cannot be found on disk.
            for entry in entries.values.sorted(by: { $0.line < $1.line }) {
                if let absent = entry.dependencies.first(where: { entries[$0] == nil }) {
                    throw .modulesIndex(path: depPath, line: entry.line,
                                        reason: "\(entry.module.name) depends on \(absent), which has no line of its own")
                }
            }

            // Absent on old kernels: then nothing counts as built in.
            let builtinPath = directory + "/modules.builtin"
            let builtin: [UInt8]
            do {
                builtin = try readWholeFile(builtinPath, limit: KernelModules.maximumIndexBytes)
            } catch .unreadable(_, ENOENT) {
                builtin = []
            }
            for (_, line) in Self.lines(builtin) {
                builtIn.insert(KernelModules.normalizedName(String(decoding: line, as: UTF8.self)))
            }
        }

        /// Non-empty lines with their 1-based numbers, trailing spaces and '\r' dropped.
        static func lines(_ bytes: [UInt8]) -> [(Int, ArraySlice<UInt8>)] {
            var out: [(Int, ArraySlice<UInt8>)] = []
            for (i, raw) in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated() {
                var line = raw
                while let last = line.last, last == UInt8(ascii: " ") || last == UInt8(ascii: "\r") || last == UInt8(ascii: "\t") {
                    line = line.dropLast()
                }
                if !line.isEmpty { out.append((i + 1, line)) }
            }
            return out
        }

        /// A path as depmod writes it: relative to the modules directory, ending in a module
        /// suffix, without "." or ".." components (it becomes a file name swiftvmm reads).
        static func modulePath(_ bytes: ArraySlice<UInt8>, _ file: String, _ line: Int) throws(ExecError) -> String {
            let path = String(decoding: bytes, as: UTF8.self)
            guard !path.isEmpty, !path.hasPrefix("/") else {
                throw .modulesIndex(path: file, line: line, reason: "\(quote(path)) is not a path relative to the modules directory")
            }
            guard ExecSpec.isModuleFileName(path) else {
                throw .modulesIndex(path: file, line: line, reason: "\(quote(path)) is not a .ko, .ko.xz, .ko.zst or .ko.gz file")
            }
            let components = path.split(separator: "/", omittingEmptySubsequences: false)
            guard !components.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) else {
                throw .modulesIndex(path: file, line: line, reason: "\(quote(path)) has an empty, \".\" or \"..\" component")
            }
            return path
        }
    }

    /// A depth-first walk that emits a module after everything it needs. modprobe loads a
    /// module's modules.dep list from its end, so the dependencies are visited in that order.
    struct Order {
        let index: Index
        var load: [KernelModule] = []
        var done = Set<String>()
        var visiting = Set<String>()

        init(index: Index) { self.index = index }

        mutating func visit(_ name: String, chain: [String]) throws(ExecError) {
            if done.contains(name) || index.builtIn.contains(name) { return }
            let chain = chain + [name]
            guard !visiting.contains(name) else {
                throw .dependencyCycle(Array(chain.drop(while: { $0 != name })))
            }
            guard chain.count <= KernelModules.maximumDepth else { throw .dependencyTooDeep(chain) }
            guard let entry = index.entries[name] else { return }   // checked when the index was read
            visiting.insert(name)
            for dependency in entry.dependencies.reversed() {
                try visit(dependency, chain: chain)
            }
            visiting.remove(name)
            done.insert(name)
            load.append(entry.module)
        }
    }
}
