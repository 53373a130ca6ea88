import Backends
import Glibc
import RunControl
import Synchronization

/// virtio-net (virtio 1.2, 5.1) on a network backend (a host tap): queue 0 receives, queue 1
/// transmits.
///
/// Frames cross with a 12-byte virtio_net_hdr_v1 in front, which is exactly what the tap's
/// vnet header is set to (no offloads are offered, so it carries only num_buffers).
/// Receive runs on the device thread: the backend is polled only while the guest has posted
/// buffers, so frames arriving meanwhile wait on the host side. A frame larger than the
/// guest's buffers is dropped and counted here.
public final class VirtioNet: VirtioDeviceModel {
    public static let featureMAC: UInt64 = 1 << 5
    public static let featureMergeableRX: UInt64 = 1 << 15
    public static let featureStatus: UInt64 = 1 << 16
    public static let headerSize = 12
    /// Largest frame plus header the tap can hand over without offloads.
    public static let maxFrame = 65536 + 12
    static let rxQueue = 0, txQueue = 1

    public let backend: any NetworkBackend
    public let mac: [UInt8]
    public let counters: VirtioCounters
    public var deviceType: UInt16 { 1 }
    public var queueCount: Int { 2 }
    public var queueMaxSize: UInt16 { 256 }
    public var deviceFeatures: UInt64 { Self.featureMAC | Self.featureMergeableRX | Self.featureStatus }
    public var tapName: String { backend.name }
    public let framesReceived = Atomic<UInt64>(0)
    public let framesSent = Atomic<UInt64>(0)
    public let framesDropped = Atomic<UInt64>(0)

    /// A frame taken from the backend that is waiting for guest buffers (at most one).
    /// Unchecked Sendable: the buffer is memory this device alone allocates and frees.
    struct Pending: @unchecked Sendable {
        let frame: UnsafeMutableRawPointer
        var length = 0
    }
    private let pending: Mutex<Pending>

    /// `mac` nil: generated from the backend's name.
    public init(backend: any NetworkBackend, mac: [UInt8]?, trace: TraceOptions) {
        self.backend = backend
        self.mac = mac ?? Self.generatedMAC(for: backend.name)
        counters = VirtioCounters(name: "virtio-net \(backend.name)", trace: trace)
        pending = Mutex(Pending(frame: UnsafeMutableRawPointer.allocate(byteCount: Self.maxFrame, alignment: 16)))
    }

    /// Attach to tap `tapName` (creating it if it does not exist).
    public convenience init(tapName: String, mac: [UInt8]?, trace: TraceOptions) throws(TapBackend.TapError) {
        self.init(backend: try TapBackend(name: tapName), mac: mac, trace: trace)
    }

    deinit { pending.withLock { $0.frame.deallocate() } }

    /// A locally administered unicast MAC, stable for a tap name (FNV-1a of the name).
    public static func generatedMAC(for name: String) -> [UInt8] {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in name.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return [0x02] + (0..<5).map { UInt8(truncatingIfNeeded: h >> (8 * UInt64($0))) }
    }

    /// "52:54:00:12:34:56" → bytes; nil unless six hex pairs naming a unicast address.
    public static func parseMAC(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        let bytes = parts.compactMap { $0.count == 2 ? UInt8($0, radix: 16) : nil }
        guard bytes.count == 6, bytes[0] & 1 == 0 else { return nil }
        return bytes
    }

    // MARK: Configuration (struct virtio_net_config: mac, status)

    public var configSize: Int { 8 }

    public func readConfig(offset: Int, size: Int) -> UInt64 {
        Virtio.littleEndian(mac + [1, 0], offset: offset, size: size)   // status: VIRTIO_NET_S_LINK_UP
    }

    public func reset() {
        pending.withLock { $0.length = 0 }
    }

    // MARK: Transmit

    public func serve(_ index: Int, _ queues: inout VirtioQueues) -> Bool {
        if index == Self.rxQueue {
            return receive(&queues)                        // the guest posted receive buffers
        }
        return drain(index, &queues) { chain in
            transmit(chain)
            return 0
        }
    }

    func transmit(_ chain: DescriptorChain) {
        if let fault = chain.fault {
            counters.guestError("transmit \(chain.head): \(fault)")
            framesDropped.wrappingAdd(1, ordering: .relaxed)
            return
        }
        guard chain.readableLength >= UInt64(Self.headerSize), chain.readableLength <= UInt64(Self.maxFrame) else {
            counters.guestError("transmit \(chain.head): \(chain.readableLength) bytes is not a frame with its header")
            framesDropped.wrappingAdd(1, ordering: .relaxed)
            return
        }
        var iov: [iovec] = []
        for s in chain.segments where !s.deviceWritable && s.length > 0 {
            iov.append(iovec(iov_base: s.pointer, iov_len: Int(s.length)))
        }
        if iov.withUnsafeBufferPointer({ backend.send($0) }) {
            framesSent.wrappingAdd(1, ordering: .relaxed)
        } else {
            framesDropped.wrappingAdd(1, ordering: .relaxed)   // host side full or down: as a wire would
        }
    }

    // MARK: Receive

    /// Poll the backend only while there is somewhere to put a frame.
    public var hostFD: Int32 { backend.receiveFD }
    public func hostEvents(_ queues: borrowing VirtioQueues) -> Int16 {
        let rx = queues.rings[Self.rxQueue]
        guard pending.withLock({ $0.length == 0 }), rx.hasAvailable else { return 0 }
        return Int16(POLLIN)
    }

    public func handleHostEvent(_ revents: Int16, _ queues: inout VirtioQueues) -> Bool { receive(&queues) }

    /// Move frames from the backend into guest buffers until one or the other runs out, or
    /// this turn's budget is spent (returns true then).
    func receive(_ queues: inout VirtioQueues) -> Bool {
        guard queues.rings[Self.rxQueue].isActive else { return false }
        let mergeable = queues.features & Self.featureMergeableRX != 0
        return pending.withLock { p in
            var delivered = 0
            var more = false
            receiving: while true {
                if delivered == Virtio.chainsPerTurn { more = true; break }
                if p.length == 0 {
                    guard queues.rings[Self.rxQueue].hasAvailable else { break }
                    let n = backend.receive(into: p.frame, capacity: Self.maxFrame)
                    if n == 0 { break }                        // nothing waiting
                    guard n >= Self.headerSize else { continue }
                    p.length = n
                }
                switch deliver(&p, &queues, mergeable: mergeable) {
                case .delivered: delivered += 1; p.length = 0
                case .dropped: p.length = 0
                case .broken: return false                     // NEEDS_RESET: the driver starts over anyway
                case .noBuffers:
                    // The frame waits for more buffers. The ones it could not fill are still
                    // posted, so "anything available?" would say yes forever: go on only if
                    // the driver posted more meanwhile, else wait for its kick.
                    let posted = queues.rings[Self.rxQueue].availableCount
                    _ = queues.rings[Self.rxQueue].enableNotifications()
                    if queues.rings[Self.rxQueue].availableCount == posted { break receiving }
                }
            }
            _ = queues.rings[Self.rxQueue].enableNotifications()
            if delivered > 0 && queues.rings[Self.rxQueue].needsInterrupt() { queues.interrupt(Self.rxQueue) }
            return more
        }
    }

    enum Delivery { case delivered, dropped, noBuffers, broken }

    /// Put the pending frame into one chain, or several with MRG_RXBUF (num_buffers says how many).
    private func deliver(_ p: inout Pending, _ queues: inout VirtioQueues, mergeable: Bool) -> Delivery {
        var chain = DescriptorChain()
        var first = DescriptorChain()
        var used: [(head: UInt16, length: UInt32)] = []
        var offset = 0
        while offset < p.length {
            if used.count == Int(queues.rings[Self.rxQueue].size) {
                // As many buffers as the ring holds and the frame still does not fit: no amount
                // of waiting helps (and a guest re-posting buffers as we take them must not feed
                // this loop for ever). Drop it; the buffers stay posted.
                queues.rings[Self.rxQueue].unpop(UInt16(used.count))
                framesDropped.wrappingAdd(1, ordering: .relaxed)
                counters.guestError("a \(p.length)-byte frame is larger than the whole receive ring can hold")
                return .dropped
            }
            do throws(VirtqueueError) {
                guard try queues.rings[Self.rxQueue].pop(into: &chain) else {
                    queues.rings[Self.rxQueue].unpop(UInt16(used.count))   // keep them for when more arrive
                    return .noBuffers
                }
            } catch {
                queues.broken(Self.rxQueue, error)
                return .broken
            }
            let room = chain.writableLength
            if chain.fault != nil || room < (used.isEmpty ? UInt64(Self.headerSize) : 1) {
                counters.guestError("receive buffer \(chain.head): \(chain.fault?.description ?? "only \(room) bytes")")
                // Unusable: hand it (and any taken for this frame) back empty; drop the frame.
                for u in used + [(chain.head, 0)] { queues.rings[Self.rxQueue].push(head: u.head, written: 0) }
                framesDropped.wrappingAdd(1, ordering: .relaxed)
                return .dropped
            }
            let n = Int(min(room, UInt64(p.length - offset)))
            if !mergeable && n < p.length {
                // Without MRG_RXBUF each frame needs one chain big enough: drop, keep the buffer.
                queues.rings[Self.rxQueue].unpop(1)
                framesDropped.wrappingAdd(1, ordering: .relaxed)
                counters.guestError("receive buffer \(chain.head) of \(room) bytes is too small for a \(p.length)-byte frame")
                return .dropped
            }
            _ = chain.scatter(from: p.frame + offset, count: n, at: 0)
            if used.isEmpty { first = chain }
            used.append((chain.head, UInt32(n)))
            offset += n
        }
        // num_buffers, at offset 10 of the header in the first buffer.
        var count = UInt16(used.count).littleEndian
        _ = withUnsafeBytes(of: &count) { first.scatter(from: $0.baseAddress!, count: 2, at: 10) }
        for u in used { queues.rings[Self.rxQueue].push(head: u.head, written: u.length) }
        framesReceived.wrappingAdd(1, ordering: .relaxed)
        return .delivered
    }
}
