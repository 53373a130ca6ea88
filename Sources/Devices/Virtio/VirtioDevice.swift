import HostSupport
import Memory
import RunControl
import Synchronization

/// Numbers every virtio device shares (virtio 1.2, sections 2.1 and 6).
public enum Virtio {
    // Feature bits common to all devices.
    public static let featureIndirectDescriptors: UInt64 = 1 << 28
    public static let featureEventIndex: UInt64 = 1 << 29
    public static let featureVersion1: UInt64 = 1 << 32
    // Device status bits.
    public static let statusAcknowledge: UInt8 = 1, statusDriver: UInt8 = 2, statusDriverOK: UInt8 = 4
    public static let statusFeaturesOK: UInt8 = 8, statusNeedsReset: UInt8 = 0x40, statusFailed: UInt8 = 0x80
    /// Chains a device serves from one queue before the serving loop looks at its stop
    /// request and its other queues again: a driver that posts as fast as we serve cannot
    /// keep the device thread to itself.
    public static let chainsPerTurn = 256

    /// `size` bytes of a little-endian configuration structure at `offset`; bytes past its
    /// end read as zero.
    public static func littleEndian(_ bytes: [UInt8], offset: Int, size: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<min(size, 8) where offset + i < bytes.count { v |= UInt64(bytes[offset + i]) << (8 * UInt64(i)) }
        return v
    }
}

/// What one virtio device type does (virtio 1.2, section 5): its ID, features, queues and
/// configuration, and how it serves requests. The PCI transport (`VirtioPCI`) does the rest.
///
/// `serve` and `handleHostEvent` run on the device's own thread with the transport's serving
/// lock held, and get the queues from inside that lock: a model keeps no ring state of its
/// own. State a model does keep lives in its own lock. Class-bound, so the transport calls
/// it through a witness table: no box, no allocation.
public protocol VirtioDeviceModel: AnyObject, Sendable {
    /// The virtio device ID (1 net, 2 block, 3 console, 4 entropy).
    var deviceType: UInt16 { get }
    var queueCount: Int { get }
    var queueMaxSize: UInt16 { get }
    /// Feature bits this device offers (the transport adds VERSION_1, INDIRECT_DESC, EVENT_IDX).
    var deviceFeatures: UInt64 { get }
    /// Its name, trace options and counters.
    var counters: VirtioCounters { get }

    /// The device-specific configuration structure's size and contents.
    var configSize: Int { get }
    func readConfig(offset: Int, size: Int) -> UInt64
    func writeConfig(offset: Int, size: Int, value: UInt64)

    /// The driver reset the device (serving lock held, no request in flight).
    func reset()
    /// Queue `index` was kicked, or has more from before. Returns true if it stopped with
    /// work left (its turn's budget spent), so the loop comes back to it.
    func serve(_ index: Int, _ queues: inout VirtioQueues) -> Bool

    /// A host file descriptor this device waits on besides its queues (a tap), the events it
    /// wants now (0: not now), and what to do when it is ready (true: work left).
    var hostFD: Int32 { get }
    func hostEvents(_ queues: borrowing VirtioQueues) -> Int16
    func handleHostEvent(_ revents: Int16, _ queues: inout VirtioQueues) -> Bool

    /// Non-nil for a device whose queues another process serves (vhost-user): one eventfd
    /// per queue that process signals to interrupt the driver. The device thread then leaves
    /// the kicks alone (they are the other process's) and only relays these.
    var interruptRequests: [EventFD]? { get }
    /// The driver set DRIVER_OK (serving lock held): hand the enabled rings and their kick
    /// eventfds to whoever serves them. Throws if that failed; the device then needs a reset.
    func driverStarted(_ queues: borrowing VirtioQueues, kicks: [EventFD]) throws(VirtioDeviceFailure)
    /// The transport's kick events, one per queue, handed over once when it is built. A model
    /// that leaves chains in a queue until a host resource frees up (virtio-console's output
    /// backlog) signals the queue's kick from the thread that frees it, and the device thread
    /// serves the queue again as if the driver had kicked.
    func attach(kicks: [EventFD])
    /// The driver is resetting a running device; the rings are still there (serving lock
    /// held). The last chance to take what the driver posted and the device has not taken:
    /// Linux resets its virtio devices at power-off, right after the last writes.
    func willReset(_ queues: inout VirtioQueues)
}

/// A device that cannot go on, for a reason that is not the guest's (a back-end process that
/// refused or died): the driver sees DEVICE_NEEDS_RESET, the user sees `message`.
public struct VirtioDeviceFailure: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension VirtioDeviceModel {
    public var name: String { counters.name }
    public func writeConfig(offset: Int, size: Int, value: UInt64) {}
    public func reset() {}
    public var hostFD: Int32 { -1 }
    public func hostEvents(_ queues: borrowing VirtioQueues) -> Int16 { 0 }
    public func handleHostEvent(_ revents: Int16, _ queues: inout VirtioQueues) -> Bool { false }
    public var interruptRequests: [EventFD]? { nil }
    public func driverStarted(_ queues: borrowing VirtioQueues, kicks: [EventFD]) throws(VirtioDeviceFailure) {}
    public func attach(kicks: [EventFD]) {}
    public func willReset(_ queues: inout VirtioQueues) {}
}

/// A device's name, trace options, and what it counts: guest errors it absorbed (bad
/// buffers, bad requests) and requests it served.
public final class VirtioCounters: Sendable {
    public let name: String
    public let trace: TraceOptions
    public let guestErrors = Atomic<UInt64>(0)
    public let requests = Atomic<UInt64>(0)

    public init(name: String, trace: TraceOptions) {
        self.name = name
        self.trace = trace
    }

    /// Count and trace a guest error that fails one request.
    public func guestError(_ what: @autoclosure () -> String) {
        guestErrors.wrappingAdd(1, ordering: .relaxed)
        if trace.contains(.guestErrors) { Diagnostics.line("swiftvmm: \(name): guest error: \(what())") }
    }
}

/// The way from a device back to its driver: the common configuration's registers (for the
/// vector the driver chose and the status) and the interrupts. Shared by the PCI function
/// (vCPUs) and the device thread; each part is inside its own lock.
public final class VirtioDriverLink: Sendable {
    let common: Mutex<VirtioCommonConfig>
    public let interrupts: VirtioInterrupts
    let counters: VirtioCounters

    init(common: VirtioCommonConfig, interrupts: VirtioInterrupts, counters: VirtioCounters) {
        self.common = Mutex(common)
        self.interrupts = interrupts
        self.counters = counters
    }

    public func interruptQueue(_ index: Int) {
        let vector = common.withLock { $0.vector(forQueue: index) }
        interrupts.raise(isrBit: VirtioInterrupts.isrQueue, vector: vector)
    }

    public func interruptConfig() {
        let vector = common.withLock { $0.configVector }
        interrupts.raise(isrBit: VirtioInterrupts.isrConfig, vector: vector)
    }

    /// The device failed for a reason of the host's (`VirtioDeviceFailure`): DEVICE_NEEDS_RESET
    /// and a configuration interrupt, so the driver stops waiting on it.
    public func deviceFailed() {
        common.withLock { $0.setNeedsReset() }
        interruptConfig()
    }

    /// A ring broke (the queue is already stopped): count it, DEVICE_NEEDS_RESET, and a
    /// configuration interrupt so the driver notices (virtio 1.2, 2.1.2).
    func queueBroken(_ index: Int, _ error: VirtqueueError) {
        counters.guestError("queue \(index): \(error); device needs reset")
        common.withLock { $0.setNeedsReset() }
        interruptConfig()
    }
}

/// The queues of a device as its model sees them while serving: the rings, the features the
/// driver accepted, and the link back to the driver. Lives inside the transport's serving lock.
public struct VirtioQueues: ~Copyable {
    public var rings: [Virtqueue]
    /// The negotiated features (valid while the device runs).
    public internal(set) var features: UInt64 = 0
    /// One chain's worth of scratch, reused so serving a request allocates nothing.
    var scratch = DescriptorChain()
    let link: VirtioDriverLink

    init(rings: [Virtqueue], link: VirtioDriverLink) {
        self.rings = rings
        self.link = link
    }

    /// Interrupt the driver for queue `index` (it decided it wants one: `needsInterrupt`).
    public func interrupt(_ index: Int) { link.interruptQueue(index) }

    /// The device failed (a back-end gone): the driver is told it needs a reset.
    public func deviceFailed() { link.deviceFailed() }

    /// A ring the device can no longer trust: stop the queue, count and trace it, set
    /// DEVICE_NEEDS_RESET and tell the driver with a configuration interrupt (virtio 1.2, 2.1.2).
    public mutating func broken(_ index: Int, _ error: VirtqueueError) {
        rings[index].reset()
        link.queueBroken(index, error)
    }
}

extension VirtioDeviceModel {
    /// Serve up to `Virtio.chainsPerTurn` available chains of queue `index` with `handle`
    /// (which returns how many bytes it wrote into the chain, or throws if the request cannot
    /// be answered at all), publish them, and interrupt the driver if it wants that. A broken
    /// ring or an unanswerable request stops the queue and asks for a reset. Returns true if
    /// chains are left for the next turn.
    public func drain(_ index: Int, _ queues: inout VirtioQueues,
                      _ handle: (inout DescriptorChain) throws(VirtqueueError) -> UInt32) -> Bool {
        var chain = DescriptorChain(reserving: 0)
        swap(&chain, &queues.scratch)
        defer { swap(&chain, &queues.scratch) }
        var pushed = false
        var served = 0
        repeat {
            while true {
                if served == Virtio.chainsPerTurn {
                    if pushed && queues.rings[index].needsInterrupt() { queues.interrupt(index) }
                    return true
                }
                do throws(VirtqueueError) {
                    guard try queues.rings[index].pop(into: &chain) else { break }
                } catch {
                    queues.broken(index, error)
                    return false
                }
                served += 1
                counters.requests.wrappingAdd(1, ordering: .relaxed)
                let written: UInt32
                do throws(VirtqueueError) {
                    written = try handle(&chain)
                } catch {
                    if pushed && queues.rings[index].needsInterrupt() { queues.interrupt(index) }
                    queues.broken(index, error)
                    return false
                }
                queues.rings[index].push(head: chain.head, written: written)
                pushed = true
            }
        } while queues.rings[index].enableNotifications()
        if pushed && queues.rings[index].needsInterrupt() { queues.interrupt(index) }
        return false
    }
}
