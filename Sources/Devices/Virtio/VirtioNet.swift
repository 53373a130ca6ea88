internal import CHost
import Glibc
import RunControl
import Synchronization

/// virtio-net (virtio 1.2, 5.1) on a host tap device: queue 0 receives, queue 1 transmits.
///
/// Frames cross with a 12-byte virtio_net_hdr_v1 in front, which is exactly what the tap's
/// vnet header is set to (no offloads are offered, so it carries only num_buffers).
/// Receive runs on the device thread: the tap is polled only while the guest has posted
/// buffers, so frames arriving meanwhile wait in the tap's own queue, which the host kernel
/// bounds (txqueuelen) and counts drops of. A frame larger than the guest's buffers is dropped
/// and counted here.
public final class VirtioNet: VirtioDevice, @unchecked Sendable {
    public static let featureMAC: UInt64 = 1 << 5
    public static let featureMergeableRX: UInt64 = 1 << 15
    public static let featureStatus: UInt64 = 1 << 16
    public static let headerSize = 12
    /// Largest frame plus header the tap can hand over without offloads.
    public static let maxFrame = 65536 + 12
    static let rxQueue = 0, txQueue = 1

    public let tapName: String
    public let tapFD: Int32
    public let mac: [UInt8]
    private var mergeable = false
    /// A frame read from the tap that is waiting for guest buffers (at most one).
    private var frame: UnsafeMutableRawPointer
    private var frameLength = 0
    private var rx: Virtqueue?
    public let framesReceived = Atomic<UInt64>(0)
    public let framesSent = Atomic<UInt64>(0)
    public let framesDropped = Atomic<UInt64>(0)

    public enum TapError: Error, CustomStringConvertible {
        case badName(String)
        case open(name: String, step: String, errno: Int32)
        public var description: String {
            switch self {
            case .badName(let n): return "tap name '\(n)' must be 1 to 15 characters of letters, digits, '-', '_' or '.'"
            case .open(let n, let step, let e):
                var hint = ""
                if e == EPERM || e == EACCES { hint = " (creating or attaching a tap needs CAP_NET_ADMIN, or a tap made for this user with `ip tuntap add NAME mode tap user USER`)" }
                return "cannot attach to tap \(n): \(step): \(String(cString: strerror(e)))\(hint)"
            }
        }
    }

    /// Attach to tap `name`, creating it if it does not exist. `mac` nil: generated from the name.
    public init(tapName: String, mac: [UInt8]?, trace: TraceOptions) throws(TapError) {
        guard !tapName.isEmpty, tapName.utf8.count < Int(SYS_IFNAMSIZ),
              tapName.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }) else {
            throw .badName(tapName)
        }
        var step: UnsafePointer<CChar>? = nil
        let fd = sys_tap_open(tapName, Int32(Self.headerSize), &step)
        guard fd >= 0 else { throw .open(name: tapName, step: step.map { String(cString: $0) } ?? "?", errno: -fd) }
        // A tap we just created is down; one that existed keeps the state its owner gave it.
        _ = sys_interface_up(tapName)
        self.tapName = tapName
        self.tapFD = fd
        self.mac = mac ?? Self.generatedMAC(for: tapName)
        frame = UnsafeMutableRawPointer.allocate(byteCount: Self.maxFrame, alignment: 16)
        super.init(name: "virtio-net \(tapName)", deviceType: 1, queueCount: 2, queueMaxSize: 256,
                   features: Self.featureMAC | Self.featureMergeableRX | Self.featureStatus, trace: trace)
    }

    deinit {
        close(tapFD)
        frame.deallocate()
    }

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

    public override var configSize: Int { 8 }

    public override func readConfig(offset: Int, size: Int) -> UInt64 {
        let bytes = mac + [1, 0]                          // status: VIRTIO_NET_S_LINK_UP
        var v: UInt64 = 0
        for i in 0..<size where offset + i < bytes.count { v |= UInt64(bytes[offset + i]) << (8 * UInt64(i)) }
        return v
    }

    public override func activate(features: UInt64) {
        mergeable = features & Self.featureMergeableRX != 0
        rx = transport?.queues[Self.rxQueue]
    }

    public override func reset() {
        frameLength = 0
        rx = nil
    }

    // MARK: Transmit

    public override func processQueue(_ queue: Virtqueue) {
        if queue.index == Self.rxQueue {
            receive()                                     // the guest posted receive buffers
            return
        }
        drain(queue) { chain in
            transmit(chain)
            return 0
        }
    }

    func transmit(_ chain: DescriptorChain) {
        if let fault = chain.fault {
            guestError("transmit \(chain.head): \(fault)")
            framesDropped.wrappingAdd(1, ordering: .relaxed)
            return
        }
        guard chain.readableLength >= UInt64(Self.headerSize), chain.readableLength <= UInt64(Self.maxFrame) else {
            guestError("transmit \(chain.head): \(chain.readableLength) bytes is not a frame with its header")
            framesDropped.wrappingAdd(1, ordering: .relaxed)
            return
        }
        var iov: [iovec] = []
        for s in chain.segments where !s.deviceWritable && s.length > 0 {
            iov.append(iovec(iov_base: s.pointer, iov_len: Int(s.length)))
        }
        if writev(tapFD, iov, Int32(iov.count)) < 0 {
            framesDropped.wrappingAdd(1, ordering: .relaxed)   // tap full or down: as a wire would
        } else {
            framesSent.wrappingAdd(1, ordering: .relaxed)
        }
    }

    // MARK: Receive

    /// Poll the tap only while there is somewhere to put a frame.
    public override var hostFD: Int32 { tapFD }
    public override var hostEvents: Int16 {
        guard let rx, frameLength == 0, rx.hasAvailable else { return 0 }
        return Int16(POLLIN)
    }

    public override func handleHostEvent(_ revents: Int16) { receive() }

    /// Move frames from the tap into guest buffers until one or the other runs out.
    func receive() {
        guard let rx, rx.isActive else { return }
        var delivered = false
        while true {
            if frameLength == 0 {
                guard rx.hasAvailable else { break }
                let n = read(tapFD, frame, Self.maxFrame)
                if n <= 0 { break }                        // EAGAIN: the tap is empty
                guard n >= Self.headerSize else { continue }
                frameLength = n
            }
            switch deliver(rx) {
            case .delivered: delivered = true; frameLength = 0
            case .dropped: frameLength = 0
            case .noBuffers: break
            case .broken: return                        // NEEDS_RESET: the driver starts over anyway
            }
            if frameLength != 0 {
                // Out of buffers: ask for a kick when the guest posts more.
                if !rx.enableNotifications() { break }
            }
        }
        _ = rx.enableNotifications()
        if delivered && rx.needsInterrupt() { transport?.interruptQueue(rx.index) }
    }

    enum Delivery { case delivered, dropped, noBuffers, broken }

    /// Put the pending frame into one chain, or several with MRG_RXBUF (num_buffers says how many).
    private func deliver(_ rx: Virtqueue) -> Delivery {
        var chain = DescriptorChain()
        var first = DescriptorChain()
        var used: [(head: UInt16, length: UInt32)] = []
        var offset = 0
        while offset < frameLength {
            do throws(VirtqueueError) {
                guard try rx.pop(into: &chain) else {
                    rx.unpop(UInt16(used.count))          // keep them for when more arrive
                    return .noBuffers
                }
            } catch {
                transport?.queueBroken(rx, error)
                return .broken
            }
            let room = chain.writableLength
            if chain.fault != nil || room < (used.isEmpty ? UInt64(Self.headerSize) : 1) {
                guestError("receive buffer \(chain.head): \(chain.fault?.description ?? "only \(room) bytes")")
                // Unusable: hand it (and any taken for this frame) back empty; drop the frame.
                for u in used + [(chain.head, 0)] { rx.push(head: u.head, written: 0) }
                framesDropped.wrappingAdd(1, ordering: .relaxed)
                return .dropped
            }
            let n = Int(min(room, UInt64(frameLength - offset)))
            if !mergeable && n < frameLength {
                // Without MRG_RXBUF each frame needs one chain big enough: drop, keep the buffer.
                rx.unpop(1)
                framesDropped.wrappingAdd(1, ordering: .relaxed)
                guestError("receive buffer \(chain.head) of \(room) bytes is too small for a \(frameLength)-byte frame")
                return .dropped
            }
            _ = chain.scatter(from: frame + offset, count: n, at: 0)
            if used.isEmpty { first = chain }
            used.append((chain.head, UInt32(n)))
            offset += n
        }
        // num_buffers, at offset 10 of the header in the first buffer.
        var count = UInt16(used.count).littleEndian
        _ = withUnsafeBytes(of: &count) { first.scatter(from: $0.baseAddress!, count: 2, at: 10) }
        for u in used { rx.push(head: u.head, written: u.length) }
        framesReceived.wrappingAdd(1, ordering: .relaxed)
        return .delivered
    }
}
