// Devices: the machine's device models, one file per model, and the buses they sit on. The
// vCPU loop reaches a device through an IOBus (port I/O or MMIO) with one vtable call; PCI/
// holds the bus and config space, Virtio/ the virtio-pci transport and the virtio devices. A
// device knows nothing of KVM: it raises interrupts through an InterruptSink and has guest
// doorbells attached through a DoorbellRegistrar (Interrupts.swift), which the machine
// implements over KVM and the tests over memory; its data lives in a Backend.

import Glibc
import HostSupport
import Synchronization

/// A device model as the bus sees it: an object that answers reads and writes at offsets
/// within the address range it was registered for.
///
/// Devices subclass this and override both methods. The vCPU loop calls them through the
/// class's vtable: one indirect call, no existential boxing, no closure, no allocation.
/// Unchecked Sendable because it is open (Swift checks only final classes); its own state is
/// constants and atomics, and every device model keeps what it changes inside a `Mutex`.
open class BusDevice: @unchecked Sendable {
    /// Shown in traces and reports.
    public let name: String
    /// Accesses served, for reports. Relaxed atomics: several vCPUs may count at once.
    public let reads = Atomic<UInt64>(0)
    public let writes = Atomic<UInt64>(0)

    public init(name: String) { self.name = name }

    /// A read of `size` bytes (1, 2, 4, or 8 for MMIO) at `offset` from the device's base.
    open func read(offset: UInt64, size: Int) -> UInt64 { ~0 }

    /// A write of the low `size` bytes of `value` at `offset` from the device's base.
    open func write(offset: UInt64, size: Int, value: UInt64) {}
}

public enum BusError: Error, CustomStringConvertible {
    case overlap(new: String, existing: String, address: UInt64)
    case sealed(new: String, bus: String)
    public var description: String {
        switch self {
        case .overlap(let new, let existing, let address):
            return "\(new) at \(Diagnostics.hex(address)) overlaps \(existing)"
        case .sealed(let new, let bus):
            return "\(new): the \(bus) bus is sealed (devices are added only while the machine is built)"
        }
    }
}

/// An address space (port I/O or MMIO) with devices registered on ranges of it.
///
/// Devices are registered while the machine is assembled; `seal()` then closes the bus before
/// any vCPU runs, and from there it is only read, so lookups take no lock. A sorted array and
/// a binary search: with the handful of devices a VM has, this is a few compares per access.
/// Unchecked Sendable: the tables are written only before `seal()` (enforced there) and read
/// without a lock after it.
public final class IOBus: @unchecked Sendable {
    public let name: String

    /// A device's range. The device is held unretained so that copying an entry on the hot
    /// path costs no reference counting; `owners` keeps every device alive.
    @usableFromInline
    struct Entry {
        @usableFromInline let base: UInt64
        @usableFromInline let length: UInt64
        @usableFromInline let device: Unmanaged<BusDevice>
    }
    private var owners: [BusDevice] = []

    // Written only while the machine is assembled, before any vCPU runs; read without the
    // runtime's exclusivity bookkeeping, which would otherwise cost more than the lookup.
    @exclusivity(unchecked) @usableFromInline private(set) var entries: ContiguousArray<Entry> = []

    // Accesses nobody answers (reads return all-ones, writes are dropped) are counted by the
    // vCPUs themselves, so no counter is shared on the hot path.

    /// For the port bus: the device serving each of the 65536 ports and its range's base,
    /// so a port lookup is one load instead of a search. nil for address spaces too large
    /// for a table (MMIO), which use the binary search. The 1 MiB table comes from calloc
    /// and only the pages under registered ports are ever touched.
    @frozen public struct PortSlot {
        /// The device, or nil for an unclaimed port.
        public let device: Unmanaged<BusDevice>?
        public let base: UInt16
    }
    public let portSlots: UnsafeMutablePointer<PortSlot>?
    public static let portCount = 0x10000

    /// `portSpace`: the 16-bit I/O port space (a direct lookup table) rather than MMIO.
    public init(name: String, portSpace: Bool = false) {
        self.name = name
        if portSpace {
            guard let zeroed = calloc(Self.portCount, MemoryLayout<PortSlot>.stride) else {
                fatalError("out of memory for the port table")
            }
            // All-zero bytes are a valid PortSlot: no device, base 0.
            portSlots = zeroed.bindMemory(to: PortSlot.self, capacity: Self.portCount)
        } else {
            portSlots = nil
        }
    }

    deinit { free(portSlots) }

    /// Set once the machine is built; `register` refuses from then on.
    private let isSealed = Atomic<Bool>(false)

    /// No more devices: from now on the bus is only read, by vCPUs, without a lock.
    public func seal() { isSealed.store(true, ordering: .releasing) }

    public func register(_ device: BusDevice, at base: UInt64, length: UInt64) throws(BusError) {
        guard !isSealed.load(ordering: .acquiring) else { throw .sealed(new: device.name, bus: name) }
        for e in entries where base < e.base + e.length && e.base < base + length {
            throw .overlap(new: device.name, existing: e.device.takeUnretainedValue().name, address: base)
        }
        let i = entries.firstIndex { $0.base > base } ?? entries.endIndex
        owners.append(device)
        entries.insert(Entry(base: base, length: length, device: Unmanaged.passUnretained(device)), at: i)
        if let slots = portSlots, base < UInt64(Self.portCount) {
            let slot = PortSlot(device: Unmanaged.passUnretained(device), base: UInt16(base))
            for port in Int(base)..<Int(min(base + length, UInt64(Self.portCount))) { slots[port] = slot }
        }
    }

    /// The device serving `address` and the offset into its range, or nil. The device comes
    /// unretained (the bus keeps it alive for the VM's lifetime): call it through
    /// `_withUnsafeGuaranteedRef` and the vCPU loop does no reference counting per exit.
    /// Inlinable so that loop, in another module, pays no call for the lookup either.
    @inlinable @inline(__always)
    public func find(_ address: UInt64) -> (device: Unmanaged<BusDevice>, offset: UInt64)? {
        if let slots = portSlots {
            guard address < UInt64(Self.portCount) else { return nil }
            let slot = slots[Int(address)]
            guard let device = slot.device else { return nil }
            return (device, address &- UInt64(slot.base))
        }
        var lo = 0
        var hi = entries.count
        while lo < hi {
            let mid = (lo + hi) >> 1
            let e = entries[mid]
            if address < e.base {
                hi = mid
            } else if address - e.base >= e.length {
                lo = mid + 1
            } else {
                return (e.device, address - e.base)
            }
        }
        return nil
    }

    /// `find` with a strong reference, for everything off the hot path.
    public func lookup(_ address: UInt64) -> (device: BusDevice, offset: UInt64)? {
        find(address).map { ($0.device.takeUnretainedValue(), $0.offset) }
    }

    /// All registered devices with their ranges, for reports and `--verbose`.
    public var devices: [(base: UInt64, length: UInt64, device: BusDevice)] {
        entries.map { ($0.base, $0.length, $0.device.takeUnretainedValue()) }
    }
}
