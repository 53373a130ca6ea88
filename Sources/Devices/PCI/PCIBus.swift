import Synchronization

/// PCI bus 0: a host bridge at 00:00.0, devices in the other slots, configuration mechanism #1
/// (ports 0xCF8/0xCFC) and a 32-bit MMIO window for the BARs.
///
/// The window is the machine's PCI hole (`BootLayout.pciHole`: between the end of low RAM and
/// the IOAPIC), so it never overlaps RAM or the e820 map. BARs are assigned at start, naturally aligned, as firmware would; a guest may move
/// them (Linux normally keeps them) and the window follows.
/// Unchecked Sendable only for `configPorts` and `window`, set once in `init` (they point back
/// at the bus); everything that changes is inside the two locks.
public final class PCIBus: @unchecked Sendable {
    public static let configAddressPort: UInt64 = 0xCF8
    public static let configPortCount: UInt64 = 8
    public static let slotCount = 32

    struct Mapping {
        let base: UInt64
        let size: UInt64
        let device: PCIDevice
        let bar: Int
    }

    /// Config space and the conf1 address latch: one lock, so accesses from several vCPUs do
    /// not interleave (as they cannot on a real bus).
    private struct ConfigState {
        var address: UInt32 = 0
        var slots: [PCIDevice?] = Array(repeating: nil, count: PCIBus.slotCount)
        /// Where the next BAR goes (BARs are assigned at start, in slot order).
        var nextBARAddress: UInt64
    }
    private let configState: Mutex<ConfigState>
    /// The guest-physical range BARs are placed in (the machine's PCI hole).
    public let mmioWindow: Range<UInt64>
    private let mappings = Mutex<[Mapping]>([])

    /// The BusDevices to register: conf1 on the port bus, the window on the MMIO bus.
    public private(set) var configPorts: PCIConfigPorts! = nil
    public private(set) var window: PCIMMIOWindow! = nil

    public init(window hole: Range<UInt64>) {
        mmioWindow = hole
        configState = Mutex(ConfigState(nextBARAddress: hole.lowerBound))
        configPorts = PCIConfigPorts(bus: self)
        self.window = PCIMMIOWindow(bus: self)
        let bridge = PCIDevice(name: "host bridge", config: PCIConfigSpace(
            vendor: 0x1B36, device: 0x0008, revision: 0, classCode: 0x06_00_00,
            subsystemVendor: 0x1B36, subsystem: 0x0008), barSizes: [])
        configState.withLock { $0.slots[0] = bridge }
    }

    public enum AddError: Error, CustomStringConvertible {
        case busFull(String)
        case windowFull(String, bytes: UInt64)
        public var description: String {
            switch self {
            case .busFull(let n): return "no free PCI slot for \(n)"
            case .windowFull(let n, let b): return "no room in the PCI MMIO window for \(n)'s \(b)-byte BAR"
            }
        }
    }

    /// Put `device` in the next free slot and assign its BARs. Returns the slot number.
    @discardableResult
    public func add(_ device: PCIDevice) throws(AddError) -> Int {
        try configState.withLock { state throws(AddError) in
            var assigned: [(Int, UInt64)] = []
            var cursor = state.nextBARAddress
            for (i, size) in device.barSizes.enumerated() where size != 0 {
                let s = UInt64(size)
                let base = (cursor + s - 1) & ~(s - 1)
                guard base + s <= mmioWindow.upperBound else { throw .windowFull(device.name, bytes: s) }
                assigned.append((i, base))
                cursor = base + s
            }
            guard let slot = state.slots.firstIndex(where: { $0 == nil }) else { throw .busFull(device.name) }
            state.slots[slot] = device
            state.nextBARAddress = cursor
            for (i, base) in assigned { device.withConfig { $0.setMemoryBAR(i, address: UInt32(base), size: device.barSizes[i]) } }
            return slot
        }
    }

    public func device(inSlot slot: Int) -> PCIDevice? { configState.withLock { $0.slots[slot] } }

    // MARK: Configuration mechanism #1

    /// Read the data port: the function the address latch selects, at its register plus
    /// the port's byte offset. Nothing there reads as all-ones.
    func configDataRead(byte: Int, size: Int) -> UInt32 {
        configState.withLock { s in
            guard let (device, register) = Self.select(s) else { return ~0 }
            return device.configRead(offset: register + byte, size: min(size, 4 - byte))
        }
    }

    func configDataWrite(byte: Int, size: Int, value: UInt32) {
        let device: PCIDevice? = configState.withLock { s in
            guard let (device, register) = Self.select(s) else { return nil }
            device.configWrite(offset: register + byte, size: min(size, 4 - byte), value: value)
            return device
        }
        if let device { remap(device) }
    }

    func configAddressRead() -> UInt32 { configState.withLock { $0.address } }
    func configAddressWrite(_ value: UInt32) { configState.withLock { $0.address = value & 0x80FF_FFFC } }

    /// Enable bit 31, bus 23:16, device 15:11, function 10:8, register 7:2.
    private static func select(_ s: ConfigState) -> (PCIDevice, Int)? {
        let a = s.address
        guard a & 0x8000_0000 != 0, (a >> 16) & 0xFF == 0, (a >> 8) & 0x7 == 0 else { return nil }
        guard let device = s.slots[Int((a >> 11) & 0x1F)] else { return nil }
        return (device, Int(a & 0xFC))
    }

    /// After a config write: recompute where the device's BARs decode and tell it about moves.
    private func remap(_ device: PCIDevice) {
        var moved: [(Int, UInt64?)] = []
        configState.withLock { _ in
            mappings.withLock { maps in
                for bar in 0..<6 where device.barSizes[bar] != 0 {
                    let now = device.decodedBAR(bar)
                    let old = maps.firstIndex { $0.device === device && $0.bar == bar }
                    if let old, maps[old].base == now { continue }
                    if let old { maps.remove(at: old) }
                    if old == nil && now == nil { continue }
                    if let now { maps.append(Mapping(base: now, size: UInt64(device.barSizes[bar]), device: device, bar: bar)) }
                    moved.append((bar, now))
                }
            }
            for (bar, base) in moved { device.barMoved(bar, to: base) }
        }
    }

    // MARK: The MMIO window

    @inline(__always)
    func resolve(_ address: UInt64) -> (PCIDevice, Int, UInt64)? {
        mappings.withLock { maps in
            for m in maps where address >= m.base && address - m.base < m.size {
                return (m.device, m.bar, address - m.base)
            }
            return nil
        }
    }
}

/// Ports 0xCF8–0xCFF: CONFIG_ADDRESS (a 32-bit latch) and CONFIG_DATA.
public final class PCIConfigPorts: BusDevice, @unchecked Sendable {
    unowned let bus: PCIBus
    init(bus: PCIBus) {
        self.bus = bus
        super.init(name: "PCI config (0xCF8)")
    }

    public override func read(offset: UInt64, size: Int) -> UInt64 {
        if offset == 0 && size == 4 { return UInt64(bus.configAddressRead()) }
        if offset >= 4 { return UInt64(bus.configDataRead(byte: Int(offset - 4), size: size)) }
        return ~0                       // byte accesses to 0xCF8–0xCFB are not the latch
    }

    public override func write(offset: UInt64, size: Int, value: UInt64) {
        if offset == 0 && size == 4 { bus.configAddressWrite(UInt32(truncatingIfNeeded: value)); return }
        if offset >= 4 { bus.configDataWrite(byte: Int(offset - 4), size: size, value: UInt32(truncatingIfNeeded: value)) }
    }
}

/// The PCI hole as one range on the MMIO bus, forwarding each access to the BAR that decodes it.
public final class PCIMMIOWindow: BusDevice, @unchecked Sendable {
    unowned let bus: PCIBus
    init(bus: PCIBus) {
        self.bus = bus
        super.init(name: "PCI MMIO window")
    }

    public override func read(offset: UInt64, size: Int) -> UInt64 {
        guard let (device, bar, off) = bus.resolve(bus.mmioWindow.lowerBound + offset) else { return ~0 }
        return device.barRead(bar, offset: off, size: size)
    }

    public override func write(offset: UInt64, size: Int, value: UInt64) {
        guard let (device, bar, off) = bus.resolve(bus.mmioWindow.lowerBound + offset) else { return }
        device.barWrite(bar, offset: off, size: size, value: value)
    }
}
