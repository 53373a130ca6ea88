import Glibc
import KVM
import Machine
import Devices
import Memory
import Testing
import X86Platform

/// Config-mechanism-#1 accesses as a guest makes them: latch an address at 0xCF8, then
/// read or write 0xCFC–0xCFF.
struct Conf1 {
    let bus: PCIBus
    func address(slot: Int, register: Int, bus busNumber: Int = 0, function: Int = 0) -> UInt64 {
        UInt64(0x8000_0000 | busNumber << 16 | slot << 11 | function << 8 | register)
    }
    func read(slot: Int, _ register: Int, size: Int = 4, bus b: Int = 0, function: Int = 0) -> UInt32 {
        bus.configPorts.write(offset: 0, size: 4, value: address(slot: slot, register: register & ~3, bus: b, function: function))
        return UInt32(truncatingIfNeeded: bus.configPorts.read(offset: 4 + UInt64(register & 3), size: size))
    }
    func write(slot: Int, _ register: Int, _ value: UInt32, size: Int = 4) {
        bus.configPorts.write(offset: 0, size: 4, value: address(slot: slot, register: register & ~3))
        bus.configPorts.write(offset: 4 + UInt64(register & 3), size: size, value: UInt64(value))
    }
}

@Suite("PCI")
struct PCITests {
    final class Probe: PCIDevice, @unchecked Sendable {
        var moves: [(Int, UInt64?)] = []
        var lastWrite: (UInt64, UInt64)?
        init() {
            super.init(name: "probe", config: PCIConfigSpace(vendor: 0x1234, device: 0x5678, revision: 2, classCode: 0xFF_00_00),
                       barSizes: [0x1000, 0, 0x100000])
        }
        override func barMoved(_ index: Int, to base: UInt64?) { moves.append((index, base)) }
        override func barRead(_ index: Int, offset: UInt64, size: Int) -> UInt64 { UInt64(index) << 32 | offset }
        override func barWrite(_ index: Int, offset: UInt64, size: Int, value: UInt64) { lastWrite = (offset, value) }
    }

    @Test("config space: read-only IDs, writable command bits only, BAR sizing by all-ones")
    func configSpace() {
        var c = PCIConfigSpace(vendor: 0x1AF4, device: 0x1042, revision: 1, classCode: 0x01_00_00)
        c.setMemoryBAR(0, address: 0xC000_4000, size: 0x4000)
        #expect(c.read(offset: 0, size: 4) == 0x1042_1AF4)
        c.write(offset: 0, size: 4, value: 0)
        #expect(c.read(offset: 0, size: 4) == 0x1042_1AF4)
        #expect(c.read(offset: 8, size: 4) == 0x0100_0001)
        c.write(offset: PCIConfigSpace.command, size: 2, value: 0xFFFF)
        #expect(c.get16(PCIConfigSpace.command) == 0x0407)
        #expect(c.read(offset: PCIConfigSpace.bar0, size: 4) == 0xC000_4000)
        c.write(offset: PCIConfigSpace.bar0, size: 4, value: ~0)
        #expect(c.read(offset: PCIConfigSpace.bar0, size: 4) == 0xFFFF_C000)      // size 16 KiB, 32-bit memory
        #expect(c.memoryBAR(0, size: 0x4000) == nil)                              // being sized
        c.write(offset: PCIConfigSpace.bar0, size: 4, value: 0xD000_1234)
        #expect(c.memoryBAR(0, size: 0x4000) == 0xD000_0000)                      // low bits ignored
        // Unimplemented BARs read 0 and stay 0.
        c.write(offset: PCIConfigSpace.bar0 + 4, size: 4, value: ~0)
        #expect(c.read(offset: PCIConfigSpace.bar0 + 4, size: 4) == 0)
        // Past the end: all-ones.
        #expect(c.read(offset: 254, size: 4) == 0xFFFF_0000)
    }

    @Test("capabilities are chained from 0x34 and the status bit says so")
    func capabilities() {
        var c = PCIConfigSpace(vendor: 1, device: 2, revision: 0, classCode: 0)
        #expect(c.get16(PCIConfigSpace.status) & PCIConfigSpace.statusCapabilities == 0)
        let a = c.addCapability([0x11, 0xEE, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
        let b = c.addCapability([0x09, 0xEE, 16, 1])
        #expect(c.get16(PCIConfigSpace.status) & PCIConfigSpace.statusCapabilities != 0)
        #expect(Int(c.bytes[PCIConfigSpace.capabilitiesPointer]) == a)
        #expect(Int(c.bytes[a + 1]) == b && c.bytes[b + 1] == 0)
        #expect(a % 4 == 0 && b % 4 == 0 && b >= a + 12)
    }

    @Test("conf1: the host bridge at 00:00.0, devices in the next slots, nothing elsewhere")
    func conf1() throws {
        let bus = PCIBus(window: BootLayout.pciHole)
        let probe = Probe()
        #expect(try bus.add(probe) == 1)
        let conf = Conf1(bus: bus)
        #expect(conf.read(slot: 0, 0) == 0x0008_1B36)
        #expect(conf.read(slot: 0, 8) >> 8 == 0x06_00_00)                         // host bridge class
        #expect(conf.read(slot: 1, 0) == 0x5678_1234)
        #expect(conf.read(slot: 1, 2, size: 2) == 0x5678)                        // 0xCFE
        #expect(conf.read(slot: 1, 3, size: 1) == 0x56)                          // 0xCFF
        #expect(conf.read(slot: 2, 0) == 0xFFFF_FFFF)
        #expect(conf.read(slot: 1, 0, bus: 1) == 0xFFFF_FFFF)
        #expect(conf.read(slot: 1, 0, function: 1) == 0xFFFF_FFFF)
        // The address latch reads back; with the enable bit clear, nothing is selected.
        bus.configPorts.write(offset: 0, size: 4, value: 0x0000_0800)
        #expect(bus.configPorts.read(offset: 0, size: 4) == 0x0000_0800)
        #expect(bus.configPorts.read(offset: 4, size: 4) == 0xFFFF_FFFF)
    }

    @Test("BARs are assigned naturally aligned in the window; sizing reads ~(size-1); decoding follows the command register")
    func bars() throws {
        let bus = PCIBus(window: BootLayout.pciHole)
        let probe = Probe()
        try bus.add(probe)
        let conf = Conf1(bus: bus)
        let bar0 = UInt64(conf.read(slot: 1, 0x10)), bar2 = UInt64(conf.read(slot: 1, 0x18))
        #expect(BootLayout.pciHole.contains(bar0) && BootLayout.pciHole.contains(bar2))
        #expect(bar0 % 0x1000 == 0 && bar2 % 0x100000 == 0)
        #expect(conf.read(slot: 1, 0x14) == 0)
        conf.write(slot: 1, 0x10, ~0)
        #expect(conf.read(slot: 1, 0x10) == 0xFFFF_F000)
        conf.write(slot: 1, 0x18, ~0)
        #expect(conf.read(slot: 1, 0x18) == 0xFFF0_0000)
        conf.write(slot: 1, 0x10, UInt32(bar0))
        conf.write(slot: 1, 0x18, UInt32(bar2))
        let window = bus.window!
        // Memory decoding off: nothing answers.
        #expect(window.read(offset: bar0 - BootLayout.pciHole.lowerBound + 8, size: 4) == ~0)
        #expect(probe.moves.isEmpty)
        conf.write(slot: 1, 4, UInt32(PCIConfigSpace.commandMemory), size: 2)
        #expect(window.read(offset: bar0 - BootLayout.pciHole.lowerBound + 8, size: 4) == 8)
        #expect(window.read(offset: bar2 - BootLayout.pciHole.lowerBound + 0x10, size: 4) == 2 << 32 | 0x10)
        #expect(probe.moves.count == 2)
        // The guest moves BAR 0: the old address goes quiet, the new one answers.
        let moved: UInt64 = 0xE000_0000
        conf.write(slot: 1, 0x10, UInt32(moved))
        #expect(probe.moves.last! == (0, moved))
        #expect(window.read(offset: bar0 - BootLayout.pciHole.lowerBound, size: 4) == ~0)
        window.write(offset: moved - BootLayout.pciHole.lowerBound + 4, size: 4, value: 77)
        #expect(probe.lastWrite! == (4, 77))
        conf.write(slot: 1, 4, 0, size: 2)
        #expect(probe.moves.last! == (2, nil))
    }

    @Test("MSI-X table: entries start masked, accept 4- and 8-byte accesses, PBA holds pending bits")
    func msixTable() {
        var t = MSIXTable(vectors: 3)
        #expect(t.readTable(offset: 12, size: 4) == 1)
        #expect(!t.deliverable(0))
        #expect(t.writeTable(offset: 0, size: 8, value: 0x0000_0000_FEE0_0000) == [0])
        #expect(t.writeTable(offset: 8, size: 4, value: 0x30) == [0])
        #expect(t.readTable(offset: 0, size: 8) == 0xFEE0_0000)
        #expect(t.readTable(offset: 8, size: 4) == 0x30)
        #expect(t.writeTable(offset: 8, size: 4, value: 0x30).isEmpty)             // unchanged
        #expect(t.writeTable(offset: 2, size: 4, value: 1).isEmpty)                // misaligned: ignored
        #expect(t.writeTable(offset: 48, size: 4, value: 1).isEmpty)               // past the table
        #expect(t.readTable(offset: 48, size: 4) == 0)
        _ = t.writeTable(offset: 12, size: 4, value: 0)
        #expect(!t.deliverable(0))                                                // MSI-X not enabled yet
        t.enabled = true
        #expect(t.deliverable(0) && !t.deliverable(1) && !t.deliverable(3))
        t.functionMasked = true
        #expect(!t.deliverable(0))
        t.setPending(2, true)
        #expect(t.readPBA(offset: 0, size: 8) == 0b100)
        #expect(MSIXTable.capability(vectors: 3, bar: 0, tableOffset: 0x3000, pbaOffset: 0x3800)
                == [0x11, 0, 2, 0, 0x00, 0x30, 0, 0, 0x00, 0x38, 0, 0])
    }
}

/// The KVM side of interrupts and kicks, against the real /dev/kvm.
@Suite("KVM interrupt routing and eventfds")
struct KVMInterruptTests {
    func makeVM() throws -> VirtualMachine {
        let fd = open("/dev/kvm", O_RDWR)
        if fd < 0 { Issue.record("/dev/kvm cannot be opened: these tests need KVM") }
        try #require(fd >= 0)
        close(fd)
        let vm = try KVMHost().createVM()
        try vm.createIRQChip()
        return vm
    }

    @Test("GSI routing: PC defaults plus MSI routes install; message vectors are irqfds on routed GSIs")
    func routing() throws {
        let vm = try makeVM()
        let kvm = KVMInterrupts(vm: vm)
        let vectors = try kvm.messageVectors(count: 3)
        #expect(vectors.first == 24 && vectors.count == 3)
        #expect(try kvm.messageVectors(count: 1).first == 27)
        let message = MSIMessage(addressLow: 0xFEE0_0000, data: 0x30)
        try kvm.program(vectors, 0, message)
        try kvm.program(vectors, 1, message)
        try kvm.program(vectors, 0, nil)
        // Each vector's eventfd is already an irqfd on its GSI: KVM refuses it a second time.
        #expect(throws: KVMError.self) { try vm.assignIRQFD(vectors.events[1].fd, gsi: vectors.first + 1) }
        vectors.send(1)
        #expect(GSIRoute.pcDefaults.count == 24 + 15)
        #expect(GSIRoute.pcDefaults.contains(.irqchip(gsi: 4, chip: 0, pin: 4)))
        #expect(GSIRoute.pcDefaults.contains(.irqchip(gsi: 20, chip: 2, pin: 20)))
    }

    @Test("ioeventfds: assign, refuse a duplicate, deassign; doorbells through the registrar")
    func ioeventfds() throws {
        let vm = try makeVM()
        let efd = EventFD()
        try vm.addIOEventFD(efd.fd, address: 0xC000_2000, length: 2)
        #expect(throws: KVMError.self) { try vm.addIOEventFD(efd.fd, address: 0xC000_2000, length: 2) }
        try vm.removeIOEventFD(efd.fd, address: 0xC000_2000, length: 2)
        try vm.addIOEventFD(efd.fd, address: 0x510, length: 1, pio: true, datamatch: 7)
        try vm.removeIOEventFD(efd.fd, address: 0x510, length: 1, pio: true, datamatch: 7)
        let kvm = KVMInterrupts(vm: vm)
        try kvm.attach(efd, address: 0xC000_4000, width: 2)
        #expect(throws: WiringError.self) { try kvm.attach(efd, address: 0xC000_4000, width: 2) }
        kvm.detach(efd, address: 0xC000_4000, width: 2)
        try kvm.attach(efd, address: 0xC000_4000, width: 2)
    }

    @Test("a virtio device on a real VM: BAR 0 decoding moves its doorbells, MSI-X writes install routes")
    func transportOnVM() throws {
        let vm = try makeVM()
        let memory = try GuestMemory(size: 4 << 20)
        let bus = PCIBus(window: BootLayout.pciHole)
        let kvm = KVMInterrupts(vm: vm)
        let transport = try VirtioPCI(device: VirtioRNG(trace: []), memory: memory, interrupts: kvm,
                                      intx: SharedLines(sink: kvm), intxLine: 10, doorbells: kvm)
        try bus.add(transport)
        let conf = Conf1(bus: bus)
        let bar = conf.read(slot: 1, 0x10)
        conf.write(slot: 1, 4, UInt32(PCIConfigSpace.commandMemory | PCIConfigSpace.commandBusMaster), size: 2)
        // The notify address is taken by the device's ioeventfd now: another one there is refused.
        let efd = EventFD()
        #expect(throws: KVMError.self) { try vm.addIOEventFD(efd.fd, address: UInt64(bar) + VirtioPCI.notifyOffset, length: 2) }
        // Decoding off: the address is free again.
        conf.write(slot: 1, 4, 0, size: 2)
        try vm.addIOEventFD(efd.fd, address: UInt64(bar) + VirtioPCI.notifyOffset, length: 2)
        try vm.removeIOEventFD(efd.fd, address: UInt64(bar) + VirtioPCI.notifyOffset, length: 2)
        // An unmasked MSI-X entry: the route is installed (a failure would be printed, not thrown,
        // so check the table the transport keeps and that routing still accepts changes).
        transport.barWrite(0, offset: VirtioPCI.msixTableOffset, size: 4, value: 0xFEE0_0000)
        transport.barWrite(0, offset: VirtioPCI.msixTableOffset + 8, size: 4, value: 0x30)
        transport.barWrite(0, offset: VirtioPCI.msixTableOffset + 12, size: 4, value: 0)
        #expect(transport.msixTable.entries[0] == MSIXTable.Entry(addressLow: 0xFEE0_0000, addressHigh: 0, data: 0x30, control: 0))
    }

    @Test("interrupt delivery: INTx while MSI-X is off (lowered by reading ISR, suppressed by INTx disable); MSI-X pending bits while masked")
    func interruptModes() throws {
        let vm = try makeVM()
        let memory = try GuestMemory(size: 4 << 20)
        let bus = PCIBus(window: BootLayout.pciHole)
        let kvm = KVMInterrupts(vm: vm)
        let intx = SharedLines(sink: kvm)
        let transport = try VirtioPCI(device: VirtioRNG(trace: []), memory: memory, interrupts: kvm,
                                      intx: intx, intxLine: 11, doorbells: kvm)
        try bus.add(transport)
        let conf = Conf1(bus: bus)
        transport.interruptQueue(0)
        #expect(intx.isHigh(11) && transport.isrStatus == 1)
        #expect(transport.barRead(0, offset: VirtioPCI.isrOffset, size: 1) == 1)
        #expect(!intx.isHigh(11) && transport.isrStatus == 0)
        // INTx disabled in the command register: ISR is set, the line stays low.
        conf.write(slot: 1, 4, UInt32(PCIConfigSpace.commandINTxDisable), size: 2)
        transport.interruptConfig()
        #expect(!intx.isHigh(11) && transport.isrStatus == 2)
        _ = transport.barRead(0, offset: VirtioPCI.isrOffset, size: 1)
        conf.write(slot: 1, 4, 0, size: 2)
        // MSI-X on (message control at the capability + 2), vector 0 for queue 0, entry masked.
        var cap = Int(transport.config.bytes[PCIConfigSpace.capabilitiesPointer])
        while transport.config.bytes[cap] != 0x11 { cap = Int(transport.config.bytes[cap + 1]) }
        conf.write(slot: 1, cap + 2, UInt32(MSIXTable.controlEnable), size: 2)
        transport.barWrite(0, offset: VirtioPCI.commonOffset + 22, size: 2, value: 0)      // queue_select
        transport.barWrite(0, offset: VirtioPCI.commonOffset + 26, size: 2, value: 0)      // queue_msix_vector
        transport.barWrite(0, offset: VirtioPCI.msixTableOffset, size: 4, value: 0xFEE0_0000)
        transport.barWrite(0, offset: VirtioPCI.msixTableOffset + 8, size: 4, value: 0x30)
        transport.interruptQueue(0)
        #expect(!intx.isHigh(11))
        #expect(transport.msixTable.pending[0])
        #expect(transport.barRead(0, offset: VirtioPCI.msixPBAOffset, size: 8) == 1)
        // Unmasking sends the held message and clears the pending bit.
        transport.barWrite(0, offset: VirtioPCI.msixTableOffset + 12, size: 4, value: 0)
        #expect(!transport.msixTable.pending[0])
        // NO_VECTOR: nothing at all.
        transport.barWrite(0, offset: VirtioPCI.commonOffset + 26, size: 2, value: 0xFFFF)
        transport.interruptQueue(0)
        #expect(!transport.msixTable.pending[0] && !intx.isHigh(11))
    }
}
