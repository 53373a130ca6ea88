internal import CHost
import RunControl

/// virtio-rng (virtio 1.2, 5.4, "entropy device"): one queue of device-writable buffers,
/// each filled from the host's getrandom(2).
public final class VirtioRNG: VirtioDeviceModel {
    public let counters: VirtioCounters
    public var deviceType: UInt16 { 4 }
    public var queueCount: Int { 1 }
    public var queueMaxSize: UInt16 { 64 }
    public var deviceFeatures: UInt64 { 0 }
    public var configSize: Int { 0 }
    public func readConfig(offset: Int, size: Int) -> UInt64 { 0 }

    public init(trace: TraceOptions) {
        counters = VirtioCounters(name: "virtio-rng", trace: trace)
    }

    public func serve(_ index: Int, _ queues: inout VirtioQueues) -> Bool {
        drain(index, &queues) { chain in fill(&chain) }
    }

    /// Bytes served per request at most. A driver asks for a few dozen at a time; a chain of
    /// 1024 indirect descriptors over all of guest RAM must not cost a getrandom of that much.
    /// The device may write less than the buffers hold (the used length says how much).
    public static let maxBytesPerRequest: UInt64 = 64 << 10

    /// Fill the chain's writable buffers, up to `maxBytesPerRequest`; returns the bytes written.
    public func fill(_ chain: inout DescriptorChain) -> UInt32 {
        if let fault = chain.fault {
            counters.guestError("request \(chain.head): \(fault)")
            return 0
        }
        var total: UInt64 = 0
        _ = chain.forEachPiece(writable: true, from: 0, count: min(chain.writableLength, Self.maxBytesPerRequest)) { p, n in
            var done = 0
            while done < n {
                let r = sys_getrandom(p + done, UInt(n - done))
                if r <= 0 { break }          // EINTR or a short read: return what we have
                done += r
            }
            total += UInt64(done)
            return done == n
        }
        return UInt32(truncatingIfNeeded: total)
    }
}
