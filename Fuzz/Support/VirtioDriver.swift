import Devices
import Memory

/// A virtio device behind its PCI transport, driven by a fuzzer's bytes the way a hostile
/// driver could: register writes of any offset and width, descriptors and ring indices of any
/// value, kicks, MSI-X and config-space accesses, all in a small guest RAM with a read-only
/// page. Requests are served on the calling thread (`processNow`), so a run is deterministic.
///
/// The input is a program: each step is an opcode byte and its operands. One step (`setUp`)
/// does a whole driver initialisation, so the fuzzer reaches a running device in a few bytes
/// and spends its mutations on the requests.
public final class VirtioDriver {
    /// 128 KiB of RAM: rings low, request data above, one read-only page as the hypercall
    /// page is (device-writable buffers there must be refused).
    public static let ramSize: UInt64 = 0x2_0000
    public static let readOnly: Range<UInt64> = 0x0800 ..< 0x1000
    public static let dataStart: UInt64 = 0x8000
    static func ringBase(_ q: Int) -> UInt64 { 0x1000 + UInt64(q) * 0x3000 }
    static func desc(_ q: Int) -> UInt64 { ringBase(q) }
    static func avail(_ q: Int) -> UInt64 { ringBase(q) + 0x1000 }
    static func used(_ q: Int) -> UInt64 { ringBase(q) + 0x2000 }

    // virtio_pci_common_cfg offsets.
    static let driverFeatureSelect: UInt64 = 8, driverFeature: UInt64 = 12, status: UInt64 = 20
    static let queueSelect: UInt64 = 22, queueSize: UInt64 = 24, queueEnable: UInt64 = 28
    static let queueDesc: UInt64 = 32, queueDriver: UInt64 = 40, queueDevice: UInt64 = 48

    public let memory: GuestMemory
    public let transport: VirtioPCI
    public let wiring = InMemoryWiring()
    let queueCount: Int
    /// What this driver set each queue up with, and the avail index it has published.
    var sizes: [UInt16]
    var availIdx: [UInt16]

    public init(device: any VirtioDeviceModel, memory: GuestMemory) throws {
        self.memory = memory
        transport = try VirtioPCI(device: device, memory: memory, interrupts: wiring,
                                  intx: SharedLines(sink: wiring), intxLine: 10, doorbells: wiring)
        queueCount = device.queueCount
        sizes = Array(repeating: 8, count: queueCount)
        availIdx = Array(repeating: 0, count: queueCount)
    }

    /// Fresh RAM for a run: zeroed, so a run depends on its input alone.
    public static func makeMemory() -> GuestMemory {
        try! GuestMemory(size: ramSize, readOnlyRanges: [readOnly])
    }

    public static func clear(_ memory: GuestMemory) { try! memory.fill(0, at: 0, count: ramSize) }

    func write(_ offset: UInt64, _ size: Int, _ value: UInt64) { transport.barWrite(0, offset: offset, size: size, value: value) }
    func read(_ offset: UInt64, _ size: Int) -> UInt64 { transport.barRead(0, offset: offset, size: size) }

    /// A guest-physical address: mostly in the data area (up to and across the end of RAM),
    /// sometimes any 32- or 64-bit value.
    func address(_ input: inout FuzzInput) -> UInt64 {
        let selector = input.byte()
        switch selector >> 6 {
        case 3: return input.integer(UInt64.self)
        case 2: return UInt64(input.integer(UInt32.self))
        default: return Self.dataStart + (UInt64(input.integer(UInt16.self)) << 1) % (Self.ramSize - Self.dataStart + 0x100)
        }
    }

    /// A buffer length: mostly what requests use, sometimes any 32-bit value.
    func length(_ input: inout FuzzInput) -> UInt32 {
        input.byte() & 0x80 != 0 ? input.integer(UInt32.self) : UInt32(input.integer(UInt16.self) & 0x1FFF)
    }

    /// Run the program in `input`; `deviceStep` is the device's own opcode (a frame arriving).
    public func run(_ input: inout FuzzInput, deviceStep: (inout FuzzInput) -> Void = { _ in }) {
        var steps = 0
        while !input.isEmpty && steps < 512 {
            steps += 1
            step(&input, deviceStep)
            checkState()
        }
    }

    func step(_ input: inout FuzzInput, _ deviceStep: (inout FuzzInput) -> Void) {
        let widths = [1, 2, 4, 8]
        switch input.byte() % 16 {
        case 0:
            let offset = UInt64(input.byte() % 0x40), width = input.pick(widths), value = input.integer(UInt64.self)
            write(VirtioPCI.commonOffset + offset, width, value)
            if offset == Self.status && width == 1 && value & 0xFF == 0 { checkReset() }
        case 1:
            _ = read(VirtioPCI.commonOffset + UInt64(input.byte() % 0x40), input.pick(widths))
        case 2:
            setUp(&input)
        case 3:
            let at = address(&input)
            let bytes = input.take(Int(input.byte()))
            if memory.contains(at, count: UInt64(bytes.count)) { try! memory.write(bytes, at: at) }
        case 4:
            let q = Int(input.byte()) % queueCount
            let i = UInt64(input.byte()) % UInt64(sizes[q])
            writeDescriptor(at: Self.desc(q) + 16 * i, &input)
        case 5:
            // A descriptor anywhere in the data area: indirect tables are made of these.
            writeDescriptor(at: Self.dataStart + UInt64(input.integer(UInt16.self) & 0xFFF0), &input)
        case 6:
            let q = Int(input.byte()) % queueCount
            let head = input.integer(UInt16.self) % (sizes[q] &+ 2)
            let slot = UInt64(availIdx[q] % sizes[q])
            try! memory.store(head, at: Self.avail(q) + 4 + 2 * slot)
            availIdx[q] &+= 1
            try! memory.store(availIdx[q], at: Self.avail(q) + 2)
        case 7:
            let q = Int(input.byte()) % queueCount
            availIdx[q] = input.integer(UInt16.self)
            try! memory.store(availIdx[q], at: Self.avail(q) + 2)
        case 8:
            process(Int(input.byte()) % queueCount)
        case 9:
            _ = read(VirtioPCI.isrOffset + UInt64(input.byte() % 4), input.pick(widths))
        case 10:
            msix(&input)
        case 11:
            let offset = VirtioPCI.deviceOffset + UInt64(input.byte() % 0x40), width = input.pick(widths)
            if input.bool() { write(offset, width, input.integer(UInt64.self)) } else { _ = read(offset, width) }
        case 12:
            write(VirtioPCI.notifyOffset + UInt64(input.byte() % 16), input.pick([2, 4]), UInt64(input.byte() % 4))
        case 13:
            let offset = Int(input.byte()), width = input.pick([1, 2, 4])
            if input.bool() { transport.configWrite(offset: offset, size: width, value: input.integer(UInt32.self)) }
            else { _ = transport.configRead(offset: offset, size: width) }
        case 14:
            // Avail flags (NO_INTERRUPT) or used_event (EVENT_IDX).
            let q = Int(input.byte()) % queueCount
            let at = input.bool() ? Self.avail(q) : Self.avail(q) + 4 + 2 * UInt64(sizes[q])
            try! memory.store(input.integer(UInt16.self), at: at)
        default:
            deviceStep(&input)
        }
    }

    func writeDescriptor(at base: UInt64, _ input: inout FuzzInput) {
        let address = address(&input), length = length(&input)
        let flagByte = input.byte()
        // NEXT, WRITE, INDIRECT in most; any 16 bits sometimes.
        let flags = flagByte & 0x80 != 0 ? input.integer(UInt16.self) : UInt16(flagByte & 7)
        let next = input.integer(UInt16.self)
        try! memory.store(address, at: base)
        try! memory.store(length, at: base + 8)
        try! memory.store(flags, at: base + 12)
        try! memory.store(next, at: base + 14)
    }

    /// A whole driver initialisation of one queue: reset (or not), features, the queue at this
    /// driver's ring addresses with a size from the input, DRIVER_OK.
    func setUp(_ input: inout FuzzInput) {
        let q = Int(input.byte()) % queueCount
        let size = UInt16(1) << (input.byte() % 9)
        let reset = input.bool()
        let features = (transport.offeredFeatures & input.integer(UInt64.self)) | Virtio.featureVersion1
        if reset {
            write(Self.status, 1, 0)
            checkReset()
            write(Self.status, 1, 1)
            write(Self.status, 1, 3)
            write(Self.driverFeatureSelect, 4, 0)
            write(Self.driverFeature, 4, features & 0xFFFF_FFFF)
            write(Self.driverFeatureSelect, 4, 1)
            write(Self.driverFeature, 4, features >> 32)
            write(Self.status, 1, 11)
        }
        write(Self.queueSelect, 2, UInt64(q))
        write(Self.queueSize, 2, UInt64(size))
        write(Self.queueDesc, 8, Self.desc(q))
        write(Self.queueDriver, 8, Self.avail(q))
        write(Self.queueDevice, 8, Self.used(q))
        write(Self.queueEnable, 2, 1)
        if reset { write(Self.status, 1, 15) }
        sizes[q] = size
        availIdx[q] = memory.load(UInt16.self, at: Self.avail(q) + 2)!
    }

    /// Serve queue `q` on this thread. What lands in the used ring is not checked: a driver may
    /// point a buffer at its own used ring, and the device then fills it on the driver's
    /// behalf (the first campaign's rng and net runs did; the heads the device pushes are
    /// checked in the virtqueue target, where nothing else writes the ring).
    func process(_ q: Int) {
        transport.processNow(q)
    }

    /// An MSI-X table access; what a valid aligned write stored must read back.
    func msix(_ input: inout FuzzInput) {
        let vectors = transport.msixTable.count
        let vector = Int(input.byte()) % (vectors + 1)
        let dword = Int(input.byte() % 4)
        let value = input.integer(UInt32.self)
        let offset = VirtioPCI.msixTableOffset + UInt64(16 * vector + 4 * dword)
        if input.bool() {
            _ = read(VirtioPCI.msixPBAOffset + UInt64(input.byte() % 8), input.pick([1, 2, 4, 8]))
            return
        }
        write(offset, 4, UInt64(value))
        let back = UInt32(truncatingIfNeeded: read(offset, 4))
        let expected: UInt32
        if vector == vectors { expected = 0 }
        else {
            switch dword {
            case 0: expected = value & ~3
            case 3: expected = value & 1
            default: expected = value
            }
        }
        fuzzCheck(back == expected, "MSI-X vector \(vector) dword \(dword): wrote \(value), read back \(back), expected \(expected)")
    }

    /// A reset (status 0) stops every queue. (A driver may enable a queue again before it
    /// sets any status bit, so this holds right after the reset, not whenever status is 0.)
    func checkReset() {
        fuzzCheck(transport.status == 0, "status \(transport.status) after a reset")
        for q in 0..<queueCount { fuzzCheck(!transport.queueIsActive(q), "queue \(q) active after a reset") }
    }

    /// What must hold after any step.
    func checkState() {
        let status = transport.status
        if status & Virtio.statusFeaturesOK != 0 {
            let f = transport.negotiatedFeatures
            fuzzCheck(f & ~transport.offeredFeatures == 0 && f & Virtio.featureVersion1 != 0,
                      "FEATURES_OK with features 0x\(String(f, radix: 16)), offered 0x\(String(transport.offeredFeatures, radix: 16))")
        }
    }
}
