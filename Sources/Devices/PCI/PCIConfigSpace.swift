import Synchronization

/// A PCI function's 256-byte configuration space (type 0 header), with a mask of the bits
/// the guest may change.
///
/// BAR sizing falls out of the mask: a BAR's writable bits are the address bits above its size,
/// so the guest's probe (write all-ones, read back) returns ~(size - 1) plus the type bits, as
/// on real hardware. Everything is little-endian, as PCI is.
public struct PCIConfigSpace: Sendable {
    public static let size = 256

    // Header offsets (PCI Local Bus spec, type 0).
    public static let vendorID = 0x00, deviceID = 0x02, command = 0x04, status = 0x06
    public static let revisionID = 0x08, classCode = 0x09, headerType = 0x0E
    public static let bar0 = 0x10, subsystemVendorID = 0x2C, subsystemID = 0x2E
    public static let capabilitiesPointer = 0x34, interruptLine = 0x3C, interruptPin = 0x3D

    // Command and status bits.
    public static let commandIO: UInt16 = 1 << 0, commandMemory: UInt16 = 1 << 1
    public static let commandBusMaster: UInt16 = 1 << 2, commandINTxDisable: UInt16 = 1 << 10
    public static let statusInterrupt: UInt16 = 1 << 3, statusCapabilities: UInt16 = 1 << 4

    public private(set) var bytes = [UInt8](repeating: 0, count: PCIConfigSpace.size)
    private var writable = [UInt8](repeating: 0, count: PCIConfigSpace.size)
    /// Where the next capability goes, and the previous one's "next" byte to link it from.
    private var nextCapability = 0x40
    private var lastCapabilityLink = PCIConfigSpace.capabilitiesPointer

    public init(vendor: UInt16, device: UInt16, revision: UInt8, classCode: UInt32,
                subsystemVendor: UInt16 = 0, subsystem: UInt16 = 0) {
        set16(Self.vendorID, vendor)
        set16(Self.deviceID, device)
        bytes[Self.revisionID] = revision
        bytes[Self.classCode] = UInt8(truncatingIfNeeded: classCode)
        bytes[Self.classCode + 1] = UInt8(truncatingIfNeeded: classCode >> 8)
        bytes[Self.classCode + 2] = UInt8(truncatingIfNeeded: classCode >> 16)
        set16(Self.subsystemVendorID, subsystemVendor)
        set16(Self.subsystemID, subsystem)
        // Command: I/O, memory, bus master, INTx disable are the guest's.
        let commandMask = Self.commandIO | Self.commandMemory | Self.commandBusMaster | Self.commandINTxDisable
        writable[Self.command] = UInt8(truncatingIfNeeded: commandMask)
        writable[Self.command + 1] = UInt8(truncatingIfNeeded: commandMask >> 8)
        writable[Self.interruptLine] = 0xFF      // scratch for the guest's IRQ bookkeeping
    }

    // MARK: Guest accesses

    /// A read of 1, 2 or 4 bytes; accesses past the end read as all-ones.
    public func read(offset: Int, size: Int) -> UInt32 {
        var value: UInt32 = 0
        for i in 0..<size {
            let b: UInt8 = offset + i < Self.size ? bytes[offset + i] : 0xFF
            value |= UInt32(b) << (8 * UInt32(i))
        }
        return value
    }

    /// A write of 1, 2 or 4 bytes; only the writable bits change.
    public mutating func write(offset: Int, size: Int, value: UInt32) {
        for i in 0..<size where offset + i < Self.size {
            let mask = writable[offset + i]
            let b = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i)))
            bytes[offset + i] = (bytes[offset + i] & ~mask) | (b & mask)
        }
    }

    // MARK: Set-up by the device model

    public func get16(_ offset: Int) -> UInt16 { UInt16(read(offset: offset, size: 2)) }
    public func get32(_ offset: Int) -> UInt32 { read(offset: offset, size: 4) }

    public mutating func set8(_ offset: Int, _ v: UInt8) { bytes[offset] = v }
    public mutating func set16(_ offset: Int, _ v: UInt16) {
        bytes[offset] = UInt8(truncatingIfNeeded: v)
        bytes[offset + 1] = UInt8(truncatingIfNeeded: v >> 8)
    }
    public mutating func set32(_ offset: Int, _ v: UInt32) {
        for i in 0..<4 { bytes[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) }
    }

    /// Let the guest change `mask`'s bits of the 32-bit field at `offset`.
    public mutating func setWritable32(_ offset: Int, _ mask: UInt32) {
        for i in 0..<4 { writable[offset + i] = UInt8(truncatingIfNeeded: mask >> (8 * UInt32(i))) }
    }
    public mutating func setWritable16(_ offset: Int, _ mask: UInt16) {
        writable[offset] = UInt8(truncatingIfNeeded: mask)
        writable[offset + 1] = UInt8(truncatingIfNeeded: mask >> 8)
    }

    /// Declare BAR `index` as a 32-bit, non-prefetchable memory BAR of `size` bytes (a power of
    /// two, at least 16) at `address`.
    public mutating func setMemoryBAR(_ index: Int, address: UInt32, size: UInt32) {
        precondition(size >= 16 && size & (size - 1) == 0, "BAR size must be a power of two >= 16")
        let offset = Self.bar0 + 4 * index
        set32(offset, address & ~(size - 1))
        setWritable32(offset, ~(size - 1))
    }

    /// The address a memory BAR decodes, or nil while the guest is sizing it (all-ones).
    public func memoryBAR(_ index: Int, size: UInt32) -> UInt32? {
        let value = get32(Self.bar0 + 4 * index) & ~0xF
        guard value != ~(size - 1) & ~0xF, value != 0 else { return nil }
        return value
    }

    /// Append a capability (`body` starts with its ID; the "next" byte is filled in here).
    /// Returns its offset in config space.
    @discardableResult
    public mutating func addCapability(_ body: [UInt8]) -> Int {
        let offset = nextCapability
        precondition(offset + body.count <= Self.size, "capabilities do not fit in config space")
        for (i, b) in body.enumerated() { bytes[offset + i] = b }
        bytes[offset + 1] = 0
        bytes[lastCapabilityLink] = UInt8(offset)
        lastCapabilityLink = offset + 1
        nextCapability = (offset + body.count + 3) & ~3
        set16(Self.status, get16(Self.status) | Self.statusCapabilities)
        return offset
    }
}

/// A PCI function on the bus: its configuration space and the BARs it decodes.
///
/// Subclasses are device models (the virtio transport). Config-space accesses arrive from the
/// configuration ports, BAR accesses from any vCPU through the MMIO window. Open for device
/// models to subclass, hence unchecked Sendable: its own state is constants and the config
/// space inside its lock.
open class PCIDevice: @unchecked Sendable {
    public let name: String
    private let configSpace: Mutex<PCIConfigSpace>
    /// Size of each memory BAR (0: not implemented).
    public let barSizes: [UInt32]

    public init(name: String, config: PCIConfigSpace, barSizes: [UInt32]) {
        self.name = name
        self.configSpace = Mutex(config)
        self.barSizes = barSizes + [UInt32](repeating: 0, count: max(0, 6 - barSizes.count))
    }

    /// The configuration space as it is now (a copy).
    public var config: PCIConfigSpace { configSpace.withLock { $0 } }

    /// Change the configuration space (BAR assignment at start, guest writes).
    public func withConfig<R>(_ body: (inout PCIConfigSpace) -> R) -> R { configSpace.withLock { body(&$0) } }

    open func configRead(offset: Int, size: Int) -> UInt32 { configSpace.withLock { $0.read(offset: offset, size: size) } }

    open func configWrite(offset: Int, size: Int, value: UInt32) {
        configSpace.withLock { $0.write(offset: offset, size: size, value: value) }
    }

    /// Where BAR `index` decodes now: nil when memory decoding is off or the BAR is unassigned.
    public func decodedBAR(_ index: Int) -> UInt64? {
        guard barSizes[index] != 0 else { return nil }
        return configSpace.withLock { c -> UInt64? in
            guard c.get16(PCIConfigSpace.command) & PCIConfigSpace.commandMemory != 0,
                  let base = c.memoryBAR(index, size: barSizes[index]) else { return nil }
            return UInt64(base)
        }
    }

    /// The guest moved a BAR or switched decoding (config lock held). `base` is nil if unmapped.
    open func barMoved(_ index: Int, to base: UInt64?) {}

    open func barRead(_ index: Int, offset: UInt64, size: Int) -> UInt64 { ~0 }
    open func barWrite(_ index: Int, offset: UInt64, size: Int, value: UInt64) {}
}
