import Glibc
import HostSupport
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
/// Three parts: the common configuration's register file and status machine
/// (`VirtioCommonConfig`, plain state), the interrupts (`VirtioInterrupts`: ISR, MSI-X, INTx),
/// and the device thread (`VirtioServingLoop`). This class is the PCI function that puts them
/// behind BAR 0 and config space. Kicks: each queue's notify address is a doorbell whose
/// event the device thread waits on.
public final class VirtioPCI: PCIDevice, @unchecked Sendable {
    public static let vendor: UInt16 = 0x1AF4
    public static let barSize: UInt32 = 0x4000
    public static let commonOffset: UInt64 = 0x0000, commonLength: UInt32 = 0x40
    public static let isrOffset: UInt64 = 0x0800, isrLength: UInt32 = 4
    public static let deviceOffset: UInt64 = 0x1000, deviceLength: UInt32 = 0x1000
    public static let notifyOffset: UInt64 = 0x2000, notifyMultiplier: UInt32 = 4
    public static let msixTableOffset: UInt64 = 0x3000, msixPBAOffset: UInt64 = 0x3800

    public let device: any VirtioDeviceModel
    public let link: VirtioDriverLink
    public var interrupts: VirtioInterrupts { link.interrupts }
    /// What the device thread and a vCPU that starts, resets or enables a queue share: one
    /// lock, so the rings never change under a request being served.
    struct Serving: ~Copyable {
        /// DRIVER_OK seen and the model started.
        var active = false
        var queues: VirtioQueues
    }
    let serving: Mutex<Serving>
    let memory: GuestMemory
    /// One event per queue, signalled by a guest kick.
    let kicks: [EventFD]
    private let doorbells: DoorbellRegistrar
    /// Where the notify doorbells are attached now (BAR 0 base), if anywhere.
    private let attachedAt = Mutex<UInt64?>(nil)
    /// Times attaching them failed (BAR 0 moved onto an address that is taken).
    public let doorbellFailures = Atomic<UInt64>(0)
    /// Config-space offsets of the MSI-X capability and the PCI-configuration-access capability.
    let msixCapability: Int
    let pciCfgCapability: Int
    public let offeredFeatures: UInt64

    /// Interrupts go to `sink` (INTx to `intxLine` of `intx`), doorbells are attached through
    /// `doorbells`: the machine passes its KVM implementations, unit tests in-memory ones.
    public init(device: any VirtioDeviceModel, memory: GuestMemory, interrupts sink: InterruptSink,
                intx: SharedLines, intxLine: UInt32, doorbells: DoorbellRegistrar) throws(WiringError) {
        self.device = device
        self.memory = memory
        self.doorbells = doorbells
        offeredFeatures = device.deviceFeatures | Virtio.featureVersion1
            | Virtio.featureIndirectDescriptors | Virtio.featureEventIndex
        let vectors = device.queueCount + 1
        let link = VirtioDriverLink(
            common: VirtioCommonConfig(offeredFeatures: offeredFeatures, queueCount: device.queueCount,
                                       queueMaxSize: device.queueMaxSize),
            interrupts: try VirtioInterrupts(name: device.name, vectors: vectors, sink: sink, intx: intx, intxLine: intxLine),
            counters: device.counters)
        self.link = link
        kicks = (0..<device.queueCount).map { _ in EventFD() }
        device.attach(kicks: kicks)

        var config = PCIConfigSpace(vendor: Self.vendor, device: 0x1040 + device.deviceType, revision: 1,
                                    classCode: Self.classCode(device.deviceType),
                                    subsystemVendor: Self.vendor, subsystem: 0x1100)
        config.setMemoryBAR(0, address: 0, size: Self.barSize)
        config.set8(PCIConfigSpace.interruptPin, 1)                    // INTA#
        config.set8(PCIConfigSpace.interruptLine, UInt8(truncatingIfNeeded: intxLine))
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
        serving = Mutex(Serving(queues: VirtioQueues(
            rings: (0..<device.queueCount).map { Virtqueue(index: $0, memory: memory) }, link: link)))
        super.init(name: device.name, config: config, barSizes: [Self.barSize])
    }

    static func classCode(_ type: UInt16) -> UInt32 {
        switch type {
        case 1: return 0x02_00_00          // network controller, Ethernet
        case 2: return 0x01_00_00          // mass storage, SCSI (what other VMMs report)
        case 3: return 0x07_80_00          // communication controller, other (as QEMU's virtio-serial)
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
        let c = config
        let control = c.get16(msixCapability + 2)
        interrupts.pciControlChanged(msixEnabled: control & MSIXTable.controlEnable != 0,
                                     functionMasked: control & MSIXTable.controlFunctionMask != 0,
                                     intxDisabled: c.get16(PCIConfigSpace.command) & PCIConfigSpace.commandINTxDisable != 0)
    }

    /// The BAR-0 window the PCI-configuration-access capability selects (bar must be 0).
    private func pciCfgWindow() -> (UInt64, Int)? {
        let c = config
        let bar = c.bytes[pciCfgCapability + 4]
        let off = c.get32(pciCfgCapability + 8), len = c.get32(pciCfgCapability + 12)
        guard bar == 0, len == 1 || len == 2 || len == 4, off % len == 0 else { return nil }
        return (UInt64(off), Int(len))
    }

    /// BAR 0 moved: move the queues' doorbells with it.
    public override func barMoved(_ index: Int, to base: UInt64?) {
        guard index == 0 else { return }
        let failure: WiringError? = attachedAt.withLock { at in
            if let old = at {
                for (q, kick) in kicks.enumerated() { doorbells.detach(kick, address: Self.notifyAddress(old, q), width: 2) }
            }
            at = nil
            guard let base else { return nil }
            var done = 0
            do throws(WiringError) {
                for (q, kick) in kicks.enumerated() {
                    try doorbells.attach(kick, address: Self.notifyAddress(base, q), width: 2)
                    done += 1
                }
                at = base
                return nil
            } catch {
                // Leave nothing half attached; kicks then arrive as MMIO writes (barWrite), slower.
                for (q, kick) in kicks.enumerated().prefix(done) { doorbells.detach(kick, address: Self.notifyAddress(base, q), width: 2) }
                return error
            }
        }
        // Said once: a guest that keeps moving BAR 0 onto a taken address must not flood stderr.
        if let failure, doorbellFailures.wrappingAdd(1, ordering: .relaxed).oldValue == 0 {
            Diagnostics.line("swiftvmm: \(name): \(failure); queue kicks will exit to user space (said once)")
        }
    }

    static func notifyAddress(_ base: UInt64, _ queue: Int) -> UInt64 {
        base + notifyOffset + UInt64(queue) * UInt64(notifyMultiplier)
    }

    // MARK: BAR 0

    public override func barRead(_ index: Int, offset: UInt64, size: Int) -> UInt64 {
        switch offset {
        case Self.commonOffset ..< Self.commonOffset + UInt64(Self.commonLength):
            return link.common.withLock { $0.read(offset: Int(offset - Self.commonOffset), size: size) }
        case Self.isrOffset ..< Self.isrOffset + UInt64(Self.isrLength):
            // Reading ISR returns and clears it, and drops INTx (virtio 1.2, 4.1.4.5).
            let v = interrupts.readISR()
            return offset == Self.isrOffset ? UInt64(v) : 0
        case Self.deviceOffset ..< Self.deviceOffset + UInt64(Self.deviceLength):
            let off = Int(offset - Self.deviceOffset)
            guard off + size <= device.configSize else { return 0 }
            return device.readConfig(offset: off, size: size)
        case Self.msixTableOffset ..< Self.msixPBAOffset:
            return interrupts.readTable(offset: offset - Self.msixTableOffset, size: size)
        case Self.msixPBAOffset ..< UInt64(Self.barSize):
            return interrupts.readPBA(offset: offset - Self.msixPBAOffset, size: size)
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
            // A kick that did not go through a doorbell (other width, or before BAR 0 decoded).
            let q = Int((offset - Self.notifyOffset) / UInt64(Self.notifyMultiplier))
            if q < kicks.count { kicks[q].signal() }
        case Self.msixTableOffset ..< Self.msixPBAOffset:
            if let failure = interrupts.writeTable(offset: offset - Self.msixTableOffset, size: size, value: value) {
                Diagnostics.line("swiftvmm: \(failure)")
            }
        default:
            break
        }
    }

    // MARK: What a common-configuration write sets off

    /// The register change and what it sets off are one step, inside the serving lock: a
    /// queue enabled on one vCPU and a reset on another cannot interleave (which could leave a
    /// ring active on a device just reset), and no request is being served meanwhile.
    private func writeCommon(_ offset: Int, _ size: Int, _ value: UInt64) {
        let (serveNow, guestError) = serving.withLock { s -> (Bool, String?) in
            let (effect, guestError) = link.common.withLock { $0.write(offset: offset, size: size, value: value) }
            switch effect {
            case .none:
                return (false, guestError)
            case .reset:
                reset(&s)
                return (false, guestError)
            case .start(let features):
                s.queues.features = features
                s.active = true
                do throws(VirtioDeviceFailure) {
                    try device.driverStarted(s.queues, kicks: kicks)
                } catch {
                    // The model has said why; the driver learns it must reset.
                    link.deviceFailed()
                }
                return (true, guestError)
            case .enableQueue(let q, let registers, let eventIndex):
                do throws(VirtqueueError) {
                    // The driver may shrink a queue, never grow it past what the device offers.
                    guard registers.size <= device.queueMaxSize else { throw .badQueueSize(registers.size) }
                    try s.queues.rings[q].activate(size: registers.size, descriptors: registers.descriptors,
                                                   driverArea: registers.driverArea, deviceArea: registers.deviceArea,
                                                   eventIndex: eventIndex)
                } catch {
                    s.queues.broken(q, error)
                }
                return (false, guestError)
            }
        }
        if let guestError { device.counters.guestError(guestError) }
        if serveNow { for kick in kicks { kick.signal() } }      // serve anything posted before DRIVER_OK
    }

    /// Status 0: back to the initial state (the serving lock held, so no request is in flight).
    private func reset(_ s: inout Serving) {
        if s.active { device.willReset(&s.queues) }
        for q in s.queues.rings.indices { s.queues.rings[q].reset() }
        s.queues.features = 0
        s.active = false
        device.reset()
        interrupts.reset()
    }

    public func interruptQueue(_ index: Int) { link.interruptQueue(index) }
    public func interruptConfig() { link.interruptConfig() }

    // MARK: State, for reports and tests

    public var status: UInt8 { link.common.withLock { $0.status } }
    public var isRunning: Bool { link.common.withLock { $0.isRunning } }
    public var negotiatedFeatures: UInt64 { link.common.withLock { $0.driverFeatures } }
    public var interruptMode: String { interrupts.mode }
    public var msixTable: MSIXTable { interrupts.msixTable }
    public var isrStatus: UInt8 { interrupts.isr }
    public func queueIsActive(_ index: Int) -> Bool { serving.withLock { $0.queues.rings[index].isActive } }
    /// Queue `index` as the driver set it (queue_enable) and as the device serves it, read
    /// under both locks at once: the two agree after every register write, whichever vCPU made it.
    public func queueState(_ index: Int) -> (enabled: Bool, active: Bool) {
        serving.withLock { s in (link.common.withLock { $0.queues[index].enabled }, s.queues.rings[index].isActive) }
    }
    /// Whether queue `index` has a kick its device thread has not taken yet.
    public func pendingKick(_ index: Int) -> Bool {
        var p = pollfd(fd: kicks[index].fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) == 1
    }
    public func queueHasAvailable(_ index: Int) -> Bool { serving.withLock { $0.queues.rings[index].hasAvailable } }
}
