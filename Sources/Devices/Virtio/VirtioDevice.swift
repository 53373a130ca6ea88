import HostSupport
import Memory
import RunControl
import Synchronization

/// What one virtio device type does (virtio 1.2, section 5): its ID, features, queues and
/// configuration, and how it serves requests. The PCI transport (`VirtioPCI`) does the rest.
///
/// Subclasses override the `open` members. `processQueue` and `handleHostEvent` run on the
/// device's own thread, never on a vCPU thread, with the transport's processing lock held.
open class VirtioDevice: @unchecked Sendable {
    // Feature bits common to all devices.
    public static let featureIndirectDescriptors: UInt64 = 1 << 28
    public static let featureEventIndex: UInt64 = 1 << 29
    public static let featureVersion1: UInt64 = 1 << 32

    public let name: String
    /// The virtio device ID (1 net, 2 block, 4 entropy).
    public let deviceType: UInt16
    public let queueCount: Int
    public let queueMaxSize: UInt16
    /// Feature bits this device offers (the transport adds VERSION_1, INDIRECT_DESC, EVENT_IDX).
    public let deviceFeatures: UInt64
    public let trace: TraceOptions
    /// Set by the transport when it takes the device.
    public internal(set) weak var transport: VirtioPCI?

    /// Guest errors this device absorbed (bad buffers, bad requests); requests it served.
    public let guestErrors = Atomic<UInt64>(0)
    public let requests = Atomic<UInt64>(0)

    public init(name: String, deviceType: UInt16, queueCount: Int, queueMaxSize: UInt16 = 256,
                features: UInt64, trace: TraceOptions) {
        self.name = name
        self.deviceType = deviceType
        self.queueCount = queueCount
        self.queueMaxSize = queueMaxSize
        self.deviceFeatures = features
        self.trace = trace
    }

    /// The device-specific configuration structure's size and contents.
    open var configSize: Int { 0 }
    open func readConfig(offset: Int, size: Int) -> UInt64 { 0 }
    open func writeConfig(offset: Int, size: Int, value: UInt64) {}

    /// The driver set DRIVER_OK with these features.
    open func activate(features: UInt64) {}
    /// The driver reset the device.
    open func reset() {}

    /// The driver kicked queue `index` (or it was kicked before and may have more).
    open func processQueue(_ queue: Virtqueue) {}

    /// A host file descriptor this device waits on besides its queues (a tap), the events it
    /// wants now (0: not now), and what to do when it is ready.
    open var hostFD: Int32 { -1 }
    open var hostEvents: Int16 { 0 }
    open func handleHostEvent(_ revents: Int16) {}

    /// Count and trace a guest error that fails one request.
    public func guestError(_ what: String) {
        guestErrors.wrappingAdd(1, ordering: .relaxed)
        if trace.contains(.guestErrors) { Diagnostics.line("swiftvmm: \(name): guest error: \(what)") }
    }

    /// Serve every available chain of `queue` with `handle` (which returns how many bytes it
    /// wrote into the chain, or throws if the request cannot be answered at all), publish them,
    /// and interrupt the driver if it wants that. A broken ring or an unanswerable request
    /// stops the queue and asks the driver for a reset (virtio 1.2, 2.1.2).
    public func drain(_ queue: Virtqueue, _ handle: (inout DescriptorChain) throws(VirtqueueError) -> UInt32) {
        var chain = DescriptorChain()
        var pushed = false
        repeat {
            while true {
                do throws(VirtqueueError) {
                    guard try queue.pop(into: &chain) else { break }
                } catch {
                    transport?.queueBroken(queue, error)
                    return
                }
                requests.wrappingAdd(1, ordering: .relaxed)
                let written: UInt32
                do throws(VirtqueueError) {
                    written = try handle(&chain)
                } catch {
                    if pushed && queue.needsInterrupt() { transport?.interruptQueue(queue.index) }
                    transport?.queueBroken(queue, error)
                    return
                }
                queue.push(head: chain.head, written: written)
                pushed = true
            }
        } while queue.enableNotifications()
        if pushed && queue.needsInterrupt() { transport?.interruptQueue(queue.index) }
    }
}
