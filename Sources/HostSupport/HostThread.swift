// HostSupport: what the swiftvmm process needs from its host, none of it about the guest:
// named threads for vCPUs and device workers (HostThread), the monotonic clock, whole lines
// on stderr (Diagnostics), and the JSON and version swiftvmm reports itself with. JSON and
// the version sit this low because `inspect`, crash reports and the version hypercall use
// them as well as the run report and `--version`.

import Glibc

/// A dedicated host thread (vCPUs, console input, device workers).
///
/// vCPU threads block in KVM_RUN for as long as the guest runs, so they cannot live on Swift
/// concurrency's cooperative pool (it has only as many threads as cores). The body is boxed
/// once at start; nothing per iteration.
public struct HostThread: Sendable {
    public let handle: pthread_t

    private final class Box: Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    public static func start(name: String, _ body: @escaping @Sendable () -> Void) -> HostThread {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { ctx in
            let box = Unmanaged<Box>.fromOpaque(ctx!).takeRetainedValue()
            box.body()
            return nil
        }, box)
        precondition(rc == 0, "pthread_create: \(String(cString: strerror(rc)))")
        setThreadName(tid, String(name.prefix(15)))
        return HostThread(handle: tid)
    }

    public func join() { pthread_join(handle, nil) }

    /// Deliver `signal` to this thread (used to kick a vCPU out of KVM_RUN).
    public func signal(_ signal: Int32) { pthread_kill(handle, signal) }
}
