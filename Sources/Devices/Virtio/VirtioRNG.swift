internal import CHost
import RunControl

/// virtio-rng (virtio 1.2, 5.4, "entropy device"): one queue of device-writable buffers,
/// each filled from the host's getrandom(2).
public final class VirtioRNG: VirtioDevice, @unchecked Sendable {
    public init(trace: TraceOptions) {
        super.init(name: "virtio-rng", deviceType: 4, queueCount: 1, queueMaxSize: 64, features: 0, trace: trace)
    }

    public override func processQueue(_ queue: Virtqueue) {
        drain(queue) { chain in fill(&chain) }
    }

    /// Fill every writable buffer of the chain; returns the bytes written.
    public func fill(_ chain: inout DescriptorChain) -> UInt32 {
        if let fault = chain.fault {
            guestError("request \(chain.head): \(fault)")
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
