import Glibc
import HostSupport
import KVM
import Memory
import Synchronization

/// The virtio 1.x modern PCI transport (virtio 1.2, 4.1): a PCI function with vendor 0x1AF4
/// and device 0x1040 + type, whose BAR 0 holds the common configuration, the ISR, the
/// device-specific configuration, the queue notification addresses and the MSI-X table.
///
/// BAR 0 layout (each region is announced by a vendor capability in config space):
///
///     0x0000  common configuration      0x2000  notify: queue n at 0x2000 + 4n
///     0x0800  ISR status                0x3000  MSI-X table, 0x3800 PBA
///     0x1000  device configuration
///
/// Kicks: each queue's notify address is an ioeventfd, so a guest kick is an eventfd signal
/// inside KVM; the device thread polls those fds. Interrupts: with MSI-X, each vector is an
/// irqfd on its own GSI, routed to the vector's message with KVM_SET_GSI_ROUTING; without
/// MSI-X, the function's INTx line (level, a GSI of the IOAPIC/PIC), dropped by reading ISR.
public final class VirtioPCI: PCIDevice, @unchecked Sendable {
    public static let vendor: UInt16 = 0x1AF4
    public static let barSize: UInt32 = 0x4000
    public static let commonOffset: UInt64 = 0x0000, commonLength: UInt32 = 0x40
    public static let isrOffset: UInt64 = 0x0800, isrLength: UInt32 = 4
    public static let deviceOffset: UInt64 = 0x1000, deviceLength: UInt32 = 0x1000
    public static let notifyOffset: UInt64 = 0x2000, notifyMultiplier: UInt32 = 4
    public static let msixTableOffset: UInt64 = 0x3000, msixPBAOffset: UInt64 = 0x3800
    public static let noVector: UInt16 = 0xFFFF

    // Device status bits (virtio 1.2, 2.1).
    public static let statusAcknowledge: UInt8 = 1, statusDriver: UInt8 = 2, statusDriverOK: UInt8 = 4
    public static let statusFeaturesOK: UInt8 = 8, statusNeedsReset: UInt8 = 0x40, statusFailed: UInt8 = 0x80

    public let device: VirtioDevice
    let memory: GuestMemory
    let vm: VirtualMachine?
    let router: InterruptRouter?
    let intx: SharedINTx?
    let intxGSI: UInt32
    let stopFD: Int32
    public let offeredFeatures: UInt64
    public let queues: [Virtqueue]
    /// One eventfd per queue, signalled by KVM on a guest kick.
    let kickFDs: [Int32]
    /// One eventfd per MSI-X vector, each an irqfd on GSI `firstGSI + vector`.
    let vectorFDs: [Int32]
    let firstGSI: UInt32
    /// Config-space offsets of the MSI-X capability and the PCI-configuration-access capability.
    let msixCapability: Int
    let pciCfgCapability: Int
    /// Where the notify region's ioeventfds are registered now (BAR 0 base), if anywhere.
    private var notifyBase: UInt64?

    struct QueueRegisters {
        var size: UInt16
        var vector: UInt16 = VirtioPCI.noVector
        var enabled = false
        var descriptors: UInt64 = 0
        var driverArea: UInt64 = 0
        var deviceArea: UInt64 = 0
    }

    /// The transport's registers: touched by vCPUs (MMIO) and the device thread (interrupts).
    struct Registers {
        var deviceFeatureSelect: UInt32 = 0
        var driverFeatureSelect: UInt32 = 0
        var driverFeatures: UInt64 = 0
        var configVector: UInt16 = VirtioPCI.noVector
        var status: UInt8 = 0
        var configGeneration: UInt8 = 0
        var queueSelect: UInt16 = 0
        var queues: [QueueRegisters]
        var isr: UInt8 = 0
        var intxAsserted = false
        var intxDisabled = false
        var msix: MSIXTable
    }
    let registers: Mutex<Registers>
    /// Held while the device thread serves the queues, and by a vCPU that enables a queue or
    /// resets the device, so the rings never change under a request being served.
    let processing = Mutex<Void>(())
    /// Whether the device model has been activated (DRIVER_OK seen and `activate` done).
    /// Only touched with `processing` held.
    private var modelActive = false

    /// Interrupts the device raised, and how many went out as MSI-X messages / INTx assertions
    /// (the rest were held back by a mask, NO_VECTOR, or INTx disable).
    public let interruptsSent = Atomic<UInt64>(0)
    public let msixMessages = Atomic<UInt64>(0)
    public let intxAssertions = Atomic<UInt64>(0)

    public enum SetupError: Error, CustomStringConvertible {
        case kvm(KVMError)
        public var description: String {
            switch self { case .kvm(let e): return e.description }
        }
    }

    /// `vm` nil builds the transport without KVM (unit tests of register logic): kicks then
    /// come only through MMIO writes and interrupts go nowhere.
    public init(device: VirtioDevice, memory: GuestMemory, vm: VirtualMachine?, router: InterruptRouter?,
                intx: SharedINTx?, intxGSI: UInt32, stopFD: Int32) throws(SetupError) {
        self.device = device
        self.memory = memory
        self.vm = vm
        self.router = router
        self.intx = intx
        self.intxGSI = intxGSI
        self.stopFD = stopFD
        offeredFeatures = device.deviceFeatures | VirtioDevice.featureVersion1
            | VirtioDevice.featureIndirectDescriptors | VirtioDevice.featureEventIndex
        queues = (0..<device.queueCount).map { Virtqueue(index: $0, memory: memory) }
        kickFDs = (0..<device.queueCount).map { _ in makeEventFD() }
        let vectors = device.queueCount + 1
        vectorFDs = (0..<vectors).map { _ in makeEventFD() }
        firstGSI = router?.allocateGSIs(vectors) ?? 0

        var config = PCIConfigSpace(vendor: Self.vendor, device: 0x1040 + device.deviceType, revision: 1,
                                    classCode: Self.classCode(device.deviceType),
                                    subsystemVendor: Self.vendor, subsystem: 0x1100)
        config.setMemoryBAR(0, address: 0, size: Self.barSize)
        config.set8(PCIConfigSpace.interruptPin, 1)                    // INTA#
        config.set8(PCIConfigSpace.interruptLine, UInt8(truncatingIfNeeded: intxGSI))
        msixCapability = config.addCapability(MSIXTable.capability(
            vectors: vectors, bar: 0, tableOffset: UInt32(Self.msixTableOffset), pbaOffset: UInt32(Self.msixPBAOffset)))
        config.setWritable16(msixCapability + 2, MSIXTable.controlEnable | MSIXTable.controlFunctionMask)
        config.addCapability(Self.virtioCapability(type: 1, offset: UInt32(Self.commonOffset), length: Self.commonLength))
        config.addCapability(Self.virtioCapability(type: 2, offset: UInt32(Self.notifyOffset),
                                                   length: UInt32(device.queueCount) * Self.notifyMultiplier,
                                                   extra: Self.notifyMultiplier))
        config.addCapability(Self.virtioCapability(type: 3, offset: UInt32(Self.isrOffset), length: Self.isrLength))
        config.addCapability(Self.virtioCapability(type: 4, offset: UInt32(Self.deviceOffset),
                                                   length: UInt32(max(device.configSize, 4))))
        pciCfgCapability = config.addCapability(Self.virtioCapability(type: 5, offset: 0, length: 0, extra: 0))
        // virtio_pci_cfg_cap: the guest picks bar, offset and length, then accesses pci_cfg_data.
        config.set8(pciCfgCapability + 4, 0)
        config.setWritable32(pciCfgCapability + 4, 0x0000_00FF)        // bar
        config.setWritable32(pciCfgCapability + 8, ~0)                  // offset
        config.setWritable32(pciCfgCapability + 12, ~0)                 // length
        registers = Mutex(Registers(queues: Array(repeating: QueueRegisters(size: device.queueMaxSize),
                                                  count: device.queueCount),
                                    msix: MSIXTable(vectors: vectors)))
        super.init(name: device.name, config: config, barSizes: [Self.barSize])
        device.transport = self
        if let vm {
            do {
                for (v, fd) in vectorFDs.enumerated() { try vm.assignIRQFD(fd, gsi: firstGSI + UInt32(v)) }
            } catch { throw .kvm(error) }
        }
    }

    deinit {
        for fd in kickFDs + vectorFDs { closeFD(fd) }
    }

    static func classCode(_ type: UInt16) -> UInt32 {
        switch type {
        case 1: return 0x02_00_00          // network controller, Ethernet
        case 2: return 0x01_00_00          // mass storage, SCSI (what other VMMs report)
        default: return 0xFF_00_00         // unassigned class
        }
    }

    /// struct virtio_pci_cap (16 bytes), plus one trailing word for the notify and
    /// PCI-configuration-access capabilities.
    static func virtioCapability(type: UInt8, offset: UInt32, length: UInt32, extra: UInt32? = nil) -> [UInt8] {
        var c: [UInt8] = [0x09, 0, extra == nil ? 16 : 20, type, 0, 0, 0, 0]
        c += (0..<4).map { UInt8(truncatingIfNeeded: offset >> (8 * $0)) }
        c += (0..<4).map { UInt8(truncatingIfNeeded: length >> (8 * $0)) }
        if let extra { c += (0..<4).map { UInt8(truncatingIfNeeded: extra >> (8 * $0)) } }
        return c
    }

    // MARK: Configuration space

    public override func configRead(offset: Int, size: Int) -> UInt32 {
        if offset >= pciCfgCapability + 16 && offset < pciCfgCapability + 20 {
            guard let (off, len) = pciCfgWindow() else { return 0 }
            return UInt32(truncatingIfNeeded: barRead(0, offset: off, size: len))
        }
        return super.configRead(offset: offset, size: size)
    }

    public override func configWrite(offset: Int, size: Int, value: UInt32) {
        if offset >= pciCfgCapability + 16 && offset < pciCfgCapability + 20 {
            if let (off, len) = pciCfgWindow() { barWrite(0, offset: off, size: len, value: UInt64(value)) }
            return
        }
        super.configWrite(offset: offset, size: size, value: value)
        let control = config.get16(msixCapability + 2)
        let intxDisabled = config.get16(PCIConfigSpace.command) & PCIConfigSpace.commandINTxDisable != 0
        var fire: [Int] = []
        registers.withLock { r in
            r.msix.enabled = control & MSIXTable.controlEnable != 0
            r.msix.functionMasked = control & MSIXTable.controlFunctionMask != 0
            r.intxDisabled = intxDisabled
            if r.msix.enabled || r.intxDisabled { setINTx(&r, false) } else if r.isr != 0 { setINTx(&r, true) }
            fire = takeDeliverablePending(&r)
        }
        for v in fire { signalVector(v) }
    }

    /// The BAR-0 window the PCI-configuration-access capability selects (bar must be 0).
    private func pciCfgWindow() -> (UInt64, Int)? {
        let bar = config.bytes[pciCfgCapability + 4]
        let off = config.get32(pciCfgCapability + 8), len = config.get32(pciCfgCapability + 12)
        guard bar == 0, len == 1 || len == 2 || len == 4, off % len == 0 else { return nil }
        return (UInt64(off), Int(len))
    }

    /// BAR 0 moved: move the queues' ioeventfds with it.
    public override func barMoved(_ index: Int, to base: UInt64?) {
        guard index == 0, let vm else { return }
        if let old = notifyBase {
            for (q, fd) in kickFDs.enumerated() {
                try? vm.removeIOEventFD(fd, address: old + Self.notifyOffset + UInt64(q) * UInt64(Self.notifyMultiplier), length: 2)
            }
        }
        notifyBase = nil
        guard let base else { return }
        do {
            for (q, fd) in kickFDs.enumerated() {
                try vm.addIOEventFD(fd, address: base + Self.notifyOffset + UInt64(q) * UInt64(Self.notifyMultiplier), length: 2)
            }
            notifyBase = base
        } catch {
            // Kicks still work, as MMIO exits handled in barWrite; only slower.
            Diagnostics.line("swiftvmm: \(name): \(error); queue kicks will exit to user space")
        }
    }

    // MARK: BAR 0

    public override func barRead(_ index: Int, offset: UInt64, size: Int) -> UInt64 {
        switch offset {
        case Self.commonOffset ..< Self.commonOffset + UInt64(Self.commonLength):
            return registers.withLock { r in readCommon(&r, Int(offset - Self.commonOffset), size) }
        case Self.isrOffset ..< Self.isrOffset + UInt64(Self.isrLength):
            // Reading ISR returns and clears it, and drops INTx (virtio 1.2, 4.1.4.5).
            return registers.withLock { r in
                let v = r.isr
                r.isr = 0
                setINTx(&r, false)
                return offset == Self.isrOffset ? UInt64(v) : 0
            }
        case Self.deviceOffset ..< Self.deviceOffset + UInt64(Self.deviceLength):
            let off = Int(offset - Self.deviceOffset)
            guard off + size <= device.configSize else { return 0 }
            return device.readConfig(offset: off, size: size)
        case Self.msixTableOffset ..< Self.msixPBAOffset:
            return registers.withLock { $0.msix.readTable(offset: offset - Self.msixTableOffset, size: size) }
        case Self.msixPBAOffset ..< UInt64(Self.barSize):
            return registers.withLock { $0.msix.readPBA(offset: offset - Self.msixPBAOffset, size: size) }
        default:
            return 0
        }
    }

    public override func barWrite(_ index: Int, offset: UInt64, size: Int, value: UInt64) {
        switch offset {
        case Self.commonOffset ..< Self.commonOffset + UInt64(Self.commonLength):
            writeCommon(Int(offset - Self.commonOffset), size, value)
        case Self.deviceOffset ..< Self.deviceOffset + UInt64(Self.deviceLength):
            let off = Int(offset - Self.deviceOffset)
            if off + size <= device.configSize { device.writeConfig(offset: off, size: size, value: value) }
        case Self.notifyOffset ..< Self.msixTableOffset:
            // A kick that KVM's ioeventfd did not take (other width, or before BAR 0 decoded).
            let q = Int((offset - Self.notifyOffset) / UInt64(Self.notifyMultiplier))
            if q < kickFDs.count { signalEventFD(kickFDs[q]) }
        case Self.msixTableOffset ..< Self.msixPBAOffset:
            writeMSIXTable(offset - Self.msixTableOffset, size, value)
        default:
            break
        }
    }

    // MARK: Common configuration (virtio 1.2, 4.1.4.3)

    /// Field offsets and widths of struct virtio_pci_common_cfg.
    static let commonFields: [(offset: Int, width: Int)] = [
        (0, 4), (4, 4), (8, 4), (12, 4), (16, 2), (18, 2), (20, 1), (21, 1),
        (22, 2), (24, 2), (26, 2), (28, 2), (30, 2), (32, 8), (40, 8), (48, 8), (56, 2), (58, 2),
    ]

    static func field(containing offset: Int) -> (offset: Int, width: Int)? {
        commonFields.first { offset >= $0.offset && offset < $0.offset + $0.width }
    }

    private func readCommon(_ r: inout Registers, _ offset: Int, _ size: Int) -> UInt64 {
        // Any access width: assemble the bytes from the fields they fall in.
        var value: UInt64 = 0
        var i = 0
        while i < size {
            guard let f = Self.field(containing: offset + i) else { i += 1; continue }
            let whole = commonField(&r, f.offset)
            let shift = UInt64(offset + i - f.offset) * 8
            let take = min(f.width - (offset + i - f.offset), size - i)
            let mask: UInt64 = take >= 8 ? ~0 : (1 << UInt64(take * 8)) - 1
            value |= ((whole >> shift) & mask) << UInt64(i * 8)
            i += take
        }
        return value
    }

    private func commonField(_ r: inout Registers, _ offset: Int) -> UInt64 {
        let q = Int(r.queueSelect)
        let hasQueue = q < r.queues.count
        switch offset {
        case 0: return UInt64(r.deviceFeatureSelect)
        case 4: return r.deviceFeatureSelect < 2 ? (offeredFeatures >> (32 * UInt64(r.deviceFeatureSelect))) & 0xFFFF_FFFF : 0
        case 8: return UInt64(r.driverFeatureSelect)
        case 12: return r.driverFeatureSelect < 2 ? (r.driverFeatures >> (32 * UInt64(r.driverFeatureSelect))) & 0xFFFF_FFFF : 0
        case 16: return UInt64(r.configVector)
        case 18: return UInt64(queues.count)
        case 20: return UInt64(r.status)
        case 21: return UInt64(r.configGeneration)
        case 22: return UInt64(r.queueSelect)
        case 24: return hasQueue ? UInt64(r.queues[q].size) : 0            // 0: no such queue
        case 26: return hasQueue ? UInt64(r.queues[q].vector) : UInt64(Self.noVector)
        case 28: return hasQueue && r.queues[q].enabled ? 1 : 0
        case 30: return hasQueue ? UInt64(q) : 0                          // queue_notify_off
        case 32: return hasQueue ? r.queues[q].descriptors : 0
        case 40: return hasQueue ? r.queues[q].driverArea : 0
        case 48: return hasQueue ? r.queues[q].deviceArea : 0
        default: return 0                                                  // notify_data, queue_reset
        }
    }

    private func writeCommon(_ offset: Int, _ size: Int, _ value: UInt64) {
        guard let f = Self.field(containing: offset), offset + size <= f.offset + f.width else { return }
        // Merge a narrower write into the field (the guest may write 64-bit fields as halves).
        var action: () -> Void = {}
        registers.withLock { r in
            let old = commonField(&r, f.offset)
            let shift = UInt64(offset - f.offset) * 8
            let mask: UInt64 = size >= 8 ? ~0 : ((1 << UInt64(size * 8)) - 1) << shift
            let v = (old & ~mask) | ((value << shift) & mask)
            let q = Int(r.queueSelect)
            let hasQueue = q < r.queues.count
            // Queue fields may change only while the queue is disabled (virtio 1.2, 4.1.4.3.2).
            let queueWritable = hasQueue && !r.queues[q].enabled
            switch f.offset {
            case 0: r.deviceFeatureSelect = UInt32(truncatingIfNeeded: v)
            case 8: r.driverFeatureSelect = UInt32(truncatingIfNeeded: v)
            case 12:
                guard r.status & Self.statusFeaturesOK == 0, r.driverFeatureSelect < 2 else { break }
                let s = 32 * UInt64(r.driverFeatureSelect)
                r.driverFeatures = (r.driverFeatures & ~(0xFFFF_FFFF << s)) | ((v & 0xFFFF_FFFF) << s)
            case 16: r.configVector = UInt16(truncatingIfNeeded: v)
            case 20:
                let newStatus = UInt8(truncatingIfNeeded: v)
                if newStatus == 0 { action = { [self] in resetDevice() }; break }
                action = setStatus(&r, newStatus)
            case 22: r.queueSelect = UInt16(truncatingIfNeeded: v)
            case 24 where queueWritable: r.queues[q].size = UInt16(truncatingIfNeeded: v)
            case 26 where hasQueue: r.queues[q].vector = UInt16(truncatingIfNeeded: v)
            case 28 where queueWritable && v & 1 == 1:
                r.queues[q].enabled = true
                let regs = r.queues[q]
                let eventIndex = r.driverFeatures & VirtioDevice.featureEventIndex != 0
                action = { [self] in enableQueue(q, regs, eventIndex: eventIndex) }
            case 32 where queueWritable: r.queues[q].descriptors = v
            case 40 where queueWritable: r.queues[q].driverArea = v
            case 48 where queueWritable: r.queues[q].deviceArea = v
            default: break
            }
        }
        action()
    }

    /// A status write other than 0. FEATURES_OK sticks only if the driver accepted VERSION_1
    /// and nothing this device did not offer; DRIVER_OK starts the device.
    private func setStatus(_ r: inout Registers, _ newStatus: UInt8) -> () -> Void {
        var status = newStatus & ~Self.statusNeedsReset | (r.status & Self.statusNeedsReset)
        if status & Self.statusFeaturesOK != 0 && r.status & Self.statusFeaturesOK == 0 {
            let ok = r.driverFeatures & ~offeredFeatures == 0 && r.driverFeatures & VirtioDevice.featureVersion1 != 0
            if !ok {
                status &= ~Self.statusFeaturesOK
                device.guestError("driver features 0x\(String(r.driverFeatures, radix: 16)) refused (offered 0x\(String(offeredFeatures, radix: 16)))")
            }
        }
        var startNow = status & Self.statusDriverOK != 0 && r.status & Self.statusDriverOK == 0
        if startNow && status & Self.statusFeaturesOK == 0 {
            // DRIVER_OK without agreed features (virtio 1.2, 3.1.1): the device stays inert.
            device.guestError("DRIVER_OK set without FEATURES_OK")
            startNow = false
        }
        r.status = status
        guard startNow else { return {} }
        let features = r.driverFeatures
        return { [self] in
            processing.withLock { _ in
                device.activate(features: features)
                modelActive = true
            }
            for fd in kickFDs { signalEventFD(fd) }        // serve anything posted before DRIVER_OK
        }
    }

    private func enableQueue(_ q: Int, _ regs: QueueRegisters, eventIndex: Bool) {
        processing.withLock { _ in
            do throws(VirtqueueError) {
                // The driver may shrink a queue, never grow it past what the device offers.
                guard regs.size <= device.queueMaxSize else { throw .badQueueSize(regs.size) }
                try queues[q].activate(size: regs.size, descriptors: regs.descriptors, driverArea: regs.driverArea,
                                       deviceArea: regs.deviceArea, eventIndex: eventIndex)
            } catch {
                queueBrokenLocked(queues[q], error)
            }
        }
    }

    /// Status 0: back to the initial state. Waits for a request being served to finish.
    private func resetDevice() {
        processing.withLock { _ in
            for q in queues { q.reset() }
            device.reset()
            modelActive = false
            registers.withLock { r in
                let msixEnabled = r.msix.enabled, masked = r.msix.functionMasked, intxDisabled = r.intxDisabled
                setINTx(&r, false)
                r = Registers(queues: Array(repeating: QueueRegisters(size: device.queueMaxSize), count: queues.count),
                              msix: r.msix)
                // MSI-X table and PCI config belong to PCI, not to the virtio device state.
                r.msix.enabled = msixEnabled
                r.msix.functionMasked = masked
                r.intxDisabled = intxDisabled
            }
        }
    }

    // MARK: Errors

    /// A ring the device can no longer trust (called on the device thread with `processing`
    /// held): count and trace it, stop the queue, set DEVICE_NEEDS_RESET and tell the driver
    /// with a configuration change interrupt (virtio 1.2, 2.1.2).
    public func queueBroken(_ queue: Virtqueue, _ error: VirtqueueError) { queueBrokenLocked(queue, error) }

    private func queueBrokenLocked(_ queue: Virtqueue, _ error: VirtqueueError) {
        device.guestError("queue \(queue.index): \(error); device needs reset")
        queue.reset()
        registers.withLock { r in r.status |= Self.statusNeedsReset }
        interruptConfig()
    }

    public var status: UInt8 { registers.withLock { $0.status } }
    public var isRunning: Bool {
        let s = status
        return s & Self.statusDriverOK != 0 && s & Self.statusNeedsReset == 0
    }
    public var negotiatedFeatures: UInt64 { registers.withLock { $0.driverFeatures } }

    // MARK: Interrupts

    public func interruptQueue(_ index: Int) {
        raise(isrBit: 1) { $0.queues[index].vector }
    }

    public func interruptConfig() {
        raise(isrBit: 2) { $0.configVector }
    }

    private func raise(isrBit: UInt8, vector: (Registers) -> UInt16) {
        interruptsSent.wrappingAdd(1, ordering: .relaxed)
        let send: Int? = registers.withLock { r in
            r.isr |= isrBit
            if r.msix.enabled {
                let v = Int(vector(r))
                guard v != Int(Self.noVector), v < r.msix.count else { return nil }
                if r.msix.deliverable(v) { return v }
                r.msix.setPending(v, true)
                return nil
            }
            if !r.intxDisabled { setINTx(&r, true) }
            return nil
        }
        if let send { signalVector(send) }
    }

    private func signalVector(_ v: Int) {
        msixMessages.wrappingAdd(1, ordering: .relaxed)
        signalEventFD(vectorFDs[v])
    }

    private func setINTx(_ r: inout Registers, _ level: Bool) {
        guard r.intxAsserted != level else { return }
        r.intxAsserted = level
        if level { intxAssertions.wrappingAdd(1, ordering: .relaxed) }
        intx?.change(intxGSI, asserted: level)
    }

    /// Pending vectors that became deliverable (unmasked); their pending bits are cleared.
    private func takeDeliverablePending(_ r: inout Registers) -> [Int] {
        var fire: [Int] = []
        for v in 0..<r.msix.count where r.msix.pending[v] && r.msix.deliverable(v) {
            r.msix.setPending(v, false)
            fire.append(v)
        }
        return fire
    }

    private func writeMSIXTable(_ offset: UInt64, _ size: Int, _ value: UInt64) {
        var updates: [(Int, MSIXTable.Entry)] = []
        var fire: [Int] = []
        registers.withLock { r in
            for v in r.msix.writeTable(offset: offset, size: size, value: value) { updates.append((v, r.msix.entries[v])) }
            if !updates.isEmpty { fire = takeDeliverablePending(&r) }
        }
        // Route each changed vector's GSI to its message before anything is sent on it.
        for (v, entry) in updates {
            do {
                try router?.route(firstGSI + UInt32(v), to: entry.masked ? nil : entry)
            } catch {
                Diagnostics.line("swiftvmm: \(name): MSI-X vector \(v): \(error)")
            }
        }
        for v in fire { signalVector(v) }
    }

    /// How the driver left interrupts: "MSI-X", "INTx", or "no interrupts" (INTx disabled).
    public var interruptMode: String {
        registers.withLock { r in r.msix.enabled ? "MSI-X" : r.intxDisabled ? "no interrupts" : "INTx" }
    }

    /// For tests and reports.
    public var msixTable: MSIXTable { registers.withLock { $0.msix } }
    public var isrStatus: UInt8 { registers.withLock { $0.isr } }

    // MARK: The device thread

    /// Serve the device until the run stops: wait for kicks (and the device's host fd), then
    /// let the device model work through its queues.
    public func start() -> HostThread {
        HostThread.start(name: String(device.name.prefix(15))) { [self] in serve() }
    }

    private func serve() {
        var fds = [pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)]
        for fd in kickFDs { fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
        let hostSlot = fds.count
        fds.append(pollfd(fd: device.hostFD, events: 0, revents: 0))
        while true {
            // The device's wish to hear from its host fd is its state: ask under the lock.
            let events = processing.withLock { _ in modelActive && isRunning ? device.hostEvents : 0 }
            fds[hostSlot].events = events
            fds[hostSlot].fd = events != 0 ? device.hostFD : -1
            let r = poll(&fds, nfds_t(fds.count), -1)
            if r < 0 { if errno == EINTR { continue }; return }
            if fds[0].revents != 0 { return }
            processing.withLock { _ in
                let serving = modelActive && isRunning
                for q in 0..<kickFDs.count where fds[1 + q].revents != 0 {
                    drainEventFD(kickFDs[q])
                    if serving && queues[q].isActive { device.processQueue(queues[q]) }
                }
                if fds[hostSlot].revents != 0 && serving { device.handleHostEvent(fds[hostSlot].revents) }
            }
        }
    }

    /// Serve queue `index` now, on the calling thread (tests without KVM drive devices this way).
    public func processNow(_ index: Int) {
        processing.withLock { _ in
            if modelActive && isRunning && queues[index].isActive { device.processQueue(queues[index]) }
        }
    }
}
