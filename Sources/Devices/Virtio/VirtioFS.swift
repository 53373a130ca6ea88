import Backends
import Glibc
import HostSupport
import Memory
import RunControl
import Synchronization

/// virtio-fs (virtio 1.2, 5.11, device ID 26): a host directory the guest mounts by its tag
/// (`mount -t virtiofs TAG /mnt`). The requests are FUSE messages, and swiftvmm does not
/// answer them itself: virtiofsd does, over vhost-user. This model is the device's face on
/// the PCI bus (its configuration: the tag and the number of request queues) and the
/// front-end that hands the rings to virtiofsd when the driver starts the device.
///
/// Queues: 0 is the high-priority queue (FUSE_INTERRUPT, FORGET), 1 the one request queue.
/// Kicks go from KVM straight to virtiofsd (the queue's ioeventfd is the kick eventfd it is
/// given); its interrupt requests come back through the device thread (`interruptRequests`).
public final class VirtioFS: VirtioDeviceModel {
    public let counters: VirtioCounters
    public var deviceType: UInt16 { 26 }
    public var queueCount: Int { 2 }
    /// libvhost-user's largest queue.
    public var queueMaxSize: UInt16 { 1024 }
    /// No device-specific features (the notification queue is not offered).
    public var deviceFeatures: UInt64 { 0 }
    /// struct virtio_fs_config: tag[36], le32 num_request_queues.
    public var configSize: Int { 40 }
    public static let maxTagLength = 36

    public let tag: String
    private let config: [UInt8]
    private let frontend: VhostUserFrontend
    /// The process behind the front-end, when we started it (tests bring their own back-end).
    public let backend: Virtiofsd?
    private let memory: GuestMemory
    private let calls: [EventFD]
    /// Told once when the device fails for the host's reasons: the machine ends the run.
    private let onFailure: @Sendable (String) -> Void
    struct State {
        var failed = false
        var handedOver = false
    }
    private let state = Mutex(State())

    public enum SetupError: Error, CustomStringConvertible {
        case badTag(String)
        case backend(String)
        public var description: String {
            switch self {
            case .badTag(let t): return "virtio-fs tag '\(t)' must be 1 to \(VirtioFS.maxTagLength) bytes, without NUL or ','"
            case .backend(let m): return m
            }
        }
    }

    /// A tag is what the guest mounts; it is also what the kernel's messages name.
    public static func validTag(_ tag: String) -> Bool {
        !tag.isEmpty && tag.utf8.count <= maxTagLength && !tag.utf8.contains(0) && !tag.contains(",")
    }

    /// Meet the back-end on `frontend` now, so a virtiofsd that will not work is an error
    /// before the guest starts rather than a mount that hangs in it.
    public init(tag: String, frontend: VhostUserFrontend, backend: Virtiofsd?, memory: GuestMemory,
                trace: TraceOptions, onFailure: @escaping @Sendable (String) -> Void) throws(SetupError) {
        guard Self.validTag(tag) else { throw .badTag(tag) }
        self.tag = tag
        var config = Array(tag.utf8) + [UInt8](repeating: 0, count: Self.maxTagLength - tag.utf8.count)
        config += [1, 0, 0, 0]
        self.config = config
        self.frontend = frontend
        self.backend = backend
        self.memory = memory
        self.onFailure = onFailure
        counters = VirtioCounters(name: "virtio-fs \(tag)", trace: trace)
        calls = (0..<2).map { _ in EventFD() }
        let features: UInt64
        do {
            features = try frontend.connect(queueCount: 2)
        } catch {
            throw .backend(Self.explain(error, backend))
        }
        // The transport offers these to every driver; the back-end must honour them.
        let needed = Virtio.featureVersion1 | Virtio.featureIndirectDescriptors | Virtio.featureEventIndex
        guard features & needed == needed else {
            throw .backend("virtio-fs \(tag): the back-end lacks virtio features 0x\(String(needed & ~features, radix: 16)) "
                           + "(VERSION_1, INDIRECT_DESC and EVENT_IDX are needed)")
        }
    }

    public func readConfig(offset: Int, size: Int) -> UInt64 { Virtio.littleEndian(config, offset: offset, size: size) }

    /// Never called: the back-end serves the queues.
    public func serve(_ index: Int, _ queues: inout VirtioQueues) -> Bool { false }

    public var interruptRequests: [EventFD]? { calls }

    public func driverStarted(_ queues: borrowing VirtioQueues, kicks: [EventFD]) throws(VirtioDeviceFailure) {
        guard !state.withLock({ $0.failed }) else { throw VirtioDeviceFailure("\(name): the back-end is gone") }
        let regions = memory.regions.map {
            VhostUserFrontend.MemoryRegion(guestAddress: $0.guestAddress, size: $0.size,
                                           hostAddress: UInt64(UInt(bitPattern: $0.host)),
                                           fileOffset: $0.fileOffset, fd: memory.fd)
        }
        var rings: [VhostUserFrontend.Ring] = []
        for q in queues.rings.indices {
            guard let a = queues.rings[q].hostAddresses else { continue }
            rings.append(VhostUserFrontend.Ring(index: q, size: queues.rings[q].size, descriptors: a.descriptors,
                                                driverArea: a.driverArea, deviceArea: a.deviceArea,
                                                kickFD: kicks[q].fd, callFD: calls[q].fd))
        }
        do {
            state.withLock { $0.handedOver = true }
            try frontend.start(features: queues.features, memory: regions, rings: rings)
        } catch {
            throw fail(Self.explain(error, backend))
        }
    }

    /// Take the rings back from the back-end before the transport forgets them.
    public func reset() {
        guard state.withLock({ s in defer { s.handedOver = false }; return s.handedOver && !s.failed }) else { return }
        do {
            try frontend.stop()
        } catch {
            _ = fail(Self.explain(error, backend))
        }
    }

    // The connection: its peer hanging up (POLLRDHUP, or POLLHUP) means the back-end is
    // gone. Not POLLIN: the replies to the vCPU's own requests (DRIVER_OK, reset) make it
    // readable too, and that vCPU reads them while it holds the serving lock. The back-end
    // never speaks unasked, so `connectionFailure` then confirms it: EOF, a reset, or a
    // message nobody asked for.
    static let peerHungUp: Int16 = 0x2000     // POLLRDHUP, a GNU name Swift's Glibc hides
    public var hostFD: Int32 { frontend.socket }
    public func hostEvents(_ queues: borrowing VirtioQueues) -> Int16 {
        state.withLock { $0.failed } ? 0 : Self.peerHungUp
    }
    public func handleHostEvent(_ revents: Int16, _ queues: inout VirtioQueues) -> Bool {
        guard let failure = frontend.connectionFailure() else { return false }
        // Give the process a moment to be reaped, so the message can say how it ended.
        var how = backend?.exitDescription()
        for _ in 0..<50 where how == nil && backend != nil {
            usleep(2000)
            how = backend?.exitDescription()
        }
        let what = backend.map { "\($0.path) (pid \($0.pid))" } ?? "the vhost-user back-end"
        _ = fail("\(name): \(what) \(how ?? failure); the guest has lost the share")
        queues.deviceFailed()
        return false
    }

    /// Record the failure (once), tell the owner, and return it to throw.
    private func fail(_ message: String) -> VirtioDeviceFailure {
        let first = state.withLock { s in defer { s.failed = true }; return !s.failed }
        if first { onFailure(message) }
        return VirtioDeviceFailure(message)
    }

    private static func explain(_ error: VhostUserError, _ backend: Virtiofsd?) -> String {
        guard let backend, let how = backend.exitDescription() else { return "\(error)" }
        return "\(error) (\(backend.path) \(how))"
    }
}
