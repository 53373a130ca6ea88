internal import CHost
import Glibc
import Synchronization

/// A virtiofsd process serving one shared directory: the back-end of a virtio-fs device.
///
/// We start it ourselves with a socket it only has to accept on (`--fd`), already connected
/// from our side before it starts: no socket path, so nothing to race for, nothing left
/// behind. Two virtiofsds exist: QEMU's C one (Debian 12: /usr/lib/qemu/virtiofsd, package
/// qemu-system-common) and the Rust one newer distributions put in PATH. Both need root for
/// their sandbox (mount namespaces); see docs/devices.md.
///
/// It shares a copy of the directory's mount tree (open_tree), placed in a mount namespace
/// of its own: the copy is made read-only by the kernel for a read-only share
/// (MOUNT_ATTR_RDONLY, submounts included), so no request a guest makes can change the host's
/// files; and `/` itself can be shared, which virtiofsd's pivot_root into its shared
/// directory could not do with the root it runs in (sys_spawn_backend in CHost).
public final class Virtiofsd: Sendable {
    public enum Flavor: String, Sendable { case qemu = "QEMU's C virtiofsd", rust = "the Rust virtiofsd" }

    public enum SpawnError: Error, CustomStringConvertible, Sendable {
        case notFound(tried: [String])
        case notExecutable(String)
        case sharedDirectory(String, errno: Int32)
        case spawn(path: String, step: String, errno: Int32)
        case socket(errno: Int32)

        public var description: String {
            switch self {
            case .notFound(let tried):
                return "virtiofsd not found (looked at \(tried.joined(separator: ", "))); install Debian's "
                    + "qemu-system-common or the virtiofsd package, or give --virtiofsd=PATH"
            case .notExecutable(let p): return "virtiofsd \(p) is not an executable file"
            case .sharedDirectory(let d, let e): return "cannot share \(d): \(String(cString: strerror(e)))"
            case .spawn(let p, let step, let e):
                var hint = ""
                if e == EPERM { hint = " (a read-only share and virtiofsd's own sandbox need root, or CAP_SYS_ADMIN)" }
                return "cannot start \(p): \(step): \(String(cString: strerror(e)))\(hint)"
            case .socket(let e): return "cannot make virtiofsd's socket: \(String(cString: strerror(e)))"
            }
        }
    }

    public static let qemuPath = "/usr/lib/qemu/virtiofsd"

    public let path: String
    public let flavor: Flavor
    public let sharedDirectory: String
    public let pid: Int32
    /// Our end of the vhost-user connection (hand it to `VhostUserFrontend`).
    public let socket: Int32
    /// The exit status once reaped (`reap`), kept for messages.
    private let reaped = Mutex<Int32?>(nil)

    /// The virtiofsd to use: `explicit` if given, else QEMU's at its Debian path, else the
    /// first `virtiofsd` in PATH. QEMU's is recognised by where it lives or by its
    /// `-o source=` option in `--help`; anything else is taken for the Rust one.
    public static func locate(explicit: String?) throws(SpawnError) -> (String, Flavor) {
        func executable(_ p: String) -> Bool {
            var st = stat()
            return stat(p, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG && access(p, X_OK) == 0
        }
        if let explicit {
            guard executable(explicit) else { throw .notExecutable(explicit) }
            return (explicit, explicit.hasSuffix("/qemu/virtiofsd") ? .qemu : .rust)
        }
        var tried = [qemuPath]
        if executable(qemuPath) { return (qemuPath, .qemu) }
        let pathVariable = getenv("PATH").map { String(cString: $0) } ?? "/usr/bin:/bin"
        for dir in pathVariable.split(separator: ":") where !dir.isEmpty {
            let p = "\(dir)/virtiofsd"
            tried.append(p)
            if executable(p) { return (p, .rust) }
        }
        for dir in ["/usr/libexec", "/usr/lib"] {
            let p = "\(dir)/virtiofsd"
            tried.append(p)
            if executable(p) { return (p, .rust) }
        }
        throw .notFound(tried: tried)
    }

    /// Start virtiofsd on `directory` (which must exist and be a directory).
    public init(path: String, flavor: Flavor, sharing directory: String, readOnly: Bool,
                stderrFD: Int32 = 2) throws(SpawnError) {
        var st = stat()
        guard stat(directory, &st) == 0 else { throw .sharedDirectory(directory, errno: errno) }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { throw .sharedDirectory(directory, errno: ENOTDIR) }

        // A listening socket with an abstract name the kernel picks (autobind), connected
        // from our side at once: virtiofsd's accept finds us first in the queue, and the
        // backlog of 0 leaves room for nobody else.
        let listener = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard listener >= 0 else { throw .socket(errno: errno) }
        defer { close(listener) }
        var family = sa_family_t(AF_UNIX)
        var address = sockaddr_un()
        var length = socklen_t(MemoryLayout<sockaddr_un>.size)
        let bound = withUnsafePointer(to: &family) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sa_family_t>.size)) }
        }
        guard bound == 0, listen(listener, 0) == 0 else { throw .socket(errno: errno) }
        guard withUnsafeMutablePointer(to: &address, {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
        }) == 0 else { throw .socket(errno: errno) }
        let client = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard client >= 0 else { throw .socket(errno: errno) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, length) }
        }
        guard connected == 0 else {
            let e = errno
            close(client)
            throw .socket(errno: e)
        }

        let fdNumber: Int32 = 3
        // It shares a copy of the directory's mount tree placed in its own mount namespace.
        let source = String(cString: SYS_BACKEND_SHARE_PATH)
        var args: [String]
        switch flavor {
        case .qemu:
            args = [path, "--fd=\(fdNumber)", "-o", "source=\(source)", "-o", "cache=auto",
                    "-o", "log_level=err", "-o", "sandbox=namespace"]
        case .rust:
            args = [path, "--fd=\(fdNumber)", "--shared-dir=\(source)", "--cache=auto",
                    "--log-level=error", "--sandbox=namespace"]
        }
        var pipeFDs: [Int32] = [-1, -1]
        guard sys_pipe_cloexec(&pipeFDs) == 0 else {
            close(client)
            throw .socket(errno: errno)
        }
        let cArgs = args.map { strdup($0) } + [nil]
        defer { for a in cArgs { free(a) } }
        let pid = cArgs.withUnsafeBufferPointer { a in
            sys_spawn_backend(path, a.baseAddress, listener, fdNumber, directory, readOnly ? 1 : 0, pipeFDs[1], stderrFD)
        }
        close(pipeFDs[1])
        defer { close(pipeFDs[0]) }
        guard pid > 0 else {
            close(client)
            throw .spawn(path: path, step: "fork", errno: -pid)
        }
        // EOF: exec worked. Else the child says which step failed and why.
        var report: (Int32, Int32) = (0, 0)
        let n = read(pipeFDs[0], &report, MemoryLayout<(Int32, Int32)>.size)
        if n == MemoryLayout<(Int32, Int32)>.size {
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            close(client)
            let steps = ["starting", "passing the socket", "unshare(CLONE_NEWNS)", "making mounts private",
                         "copying \(directory)'s mount tree (open_tree)", "making it read-only (mount_setattr)",
                         "mounting a tmpfs on /tmp", "making \(source)", "placing the copy (move_mount)", "exec"]
            throw .spawn(path: path, step: steps[Int(max(0, min(report.1, 9)))], errno: report.0)
        }
        self.path = path
        self.flavor = flavor
        self.sharedDirectory = directory
        self.pid = pid
        self.socket = client
    }

    /// If it has exited: how, for messages ("exited with status 1", "killed by signal 9").
    /// Non-blocking.
    public func exitDescription() -> String? {
        reaped.withLock { r -> String? in
            if r == nil {
                var status: Int32 = 0
                if waitpid(pid, &status, WNOHANG) == pid { r = status }
            }
            return r.map(Self.describe)
        }
    }

    /// Ask it to go (SIGTERM), and make sure it has within `seconds` (then SIGKILL).
    /// Returns how it ended.
    @discardableResult
    public func terminate(within seconds: Double = 2) -> String {
        if let done = exitDescription() { return done }
        kill(pid, SIGTERM)
        let deadline = Double(monotonicMilliseconds()) + seconds * 1000
        while Double(monotonicMilliseconds()) < deadline {
            if let done = exitDescription() { return done }
            usleep(2000)
        }
        kill(pid, SIGKILL)
        return reaped.withLock { r in
            var status: Int32 = 0
            if r == nil, waitpid(pid, &status, 0) == pid { r = status }
            return r.map(Self.describe) ?? "gone"
        }
    }

    static func describe(_ status: Int32) -> String {
        let signal = status & 0x7F
        if signal == 0 { return "exited with status \((status >> 8) & 0xFF)" }
        return "killed by signal \(signal)\(signal == SIGKILL ? " (SIGKILL)" : signal == SIGTERM ? " (SIGTERM)" : "")"
    }

    private func monotonicMilliseconds() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return UInt64(t.tv_sec) * 1000 + UInt64(t.tv_nsec) / 1_000_000
    }

    /// The socket belongs to the front-end it was handed to.
    deinit { terminate(within: 1) }
}
