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

    /// Fill every writable buffer of the chain; returns the bytes written.
    public func fill(_ chain: inout DescriptorChain) -> UInt32 {
        if let fault = chain.fault {
            counters.guestError("request \(chain.head): \(fault)")
            return 0
        }
        var total: UInt64 = 0
        _ = chain.forEachPiece(writable: true, from: 0, count: chain.writableLength) { p, n in
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
