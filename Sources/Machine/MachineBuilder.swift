// Machine: a VM built from a MachineConfig (MachineBuilder), run until something ends it
// (GuestMachine), with its vCPU loops (VCPURunner), its virtio devices and their threads
// (MachineDevices), the devices' interrupts and doorbells over KVM (KVMInterrupts), and what a
// finished run reports (GuestMachine+Reports, RunReport).

import CKVM
import Devices
import Glibc
import HostSupport
import Hypercalls
import KVM
import KernelLoading
import Memory
import RunControl
import X86Platform

/// Everything a run needs, as `MachineBuilder` leaves it.
struct MachineParts {
    let host: KVMHost
    let vm: VirtualMachine
    let memory: GuestMemory
    let kernel: LoadedKernel
    let ports: IOBus
    let mmio: IOBus
    let console: Console
    let monitor: ConsoleMonitor
    let consoleLogFD: Int32?
    let serial: Serial16550
    let stop: StopController
    let timeline: Timeline
    let devices: MachineDevices
    let runners: [VCPURunner]
}

/// Builds a machine from a `MachineConfig`, in the order the pieces need each other: what
/// watches the console (so a bad pattern is a usage error before anything is built), KVM and
/// a VM, guest RAM, the kernel, the devices on their buses (then sealed), and the vCPUs at the
/// kernel's entry. Each step turns its failures into the `MachineError` whose exit code says
/// what went wrong: a usage error, KVM missing, a bad kernel file, or swiftvmm's own failure.
enum MachineBuilder {
    static func build(_ config: MachineConfig) throws(MachineError) -> MachineParts {
        let stop = StopController()
        let timeline = Timeline(start: config.startTime ?? monotonicNanoseconds())
        let (console, monitor, logFD) = try watchedConsole(config, stop: stop, timeline: timeline)
        let (host, vm) = try kvm(config)
        let memory = try guestRAM(config, vm: vm)
        let kernel = try loadKernel(config, into: memory)

        let interrupts = KVMInterrupts(vm: vm)
        let ports = IOBus(name: "port I/O", portSpace: true)
        let mmio = IOBus(name: "MMIO")
        let serial = Serial16550(irq: IRQLine(sink: interrupts, line: Serial16550.com1IRQ), console: console)
        do {
            try ports.register(serial, at: Serial16550.com1Port, length: Serial16550.portCount)
            try LegacyPlatform.register(on: ports, stop: stop)
            try ports.register(BootMarker(timeline: timeline), at: BootMarker.port, length: 1)
            if let port = config.debugExitPort {
                try ports.register(DebugExit(stop: stop), at: UInt64(port), length: DebugExit.width)
            }
        } catch {
            throw .usage(error.description)
        }
        let devices = try MachineDevices(config: config.virtio, interrupts: interrupts, memory: memory, ports: ports,
                                         mmio: mmio, stop: stop, trace: config.trace)
        // Every device is on its bus: from here the buses are only read, by vCPUs, unlocked.
        ports.seal()
        mmio.seal()

        let handler = HypercallHandler(memory: memory, console: console, stop: stop)
        let runners = try kvmStep { () throws -> [VCPURunner] in
            // The firmware tables, now that the devices' interrupts are known.
            let supported = try host.supportedCPUID()
            try LegacyPlatform.writeMPTable(into: memory, cpus: config.cpus, supportedCPUID: supported)
            try LegacyPlatform.writeACPITables(into: memory, cpus: config.cpus, pciInterrupts: devices.pciInterrupts)
            let syncRegs = config.syncRegisters
                && UInt64(host.capability(SKVM_CAP_SYNC_REGS)) & SKVM_SYNC_X86_REGS != 0
            var runners: [VCPURunner] = []
            for id in 0..<config.cpus {
                let vcpu = try vm.createVCPU(id: id)
                try vcpu.setCPUID(CPUID.entries(supported: supported, vcpuID: id, vcpuCount: config.cpus,
                                                pvmHost: config.pvmHost))
                try wireLocalInterrupts(vcpu)
                try vcpu.setMSRs(BootMSRs.entries)
                // The bootstrap processor starts at the kernel's entry; the others wait in
                // the in-kernel LAPIC for the INIT/SIPI the kernel sends them.
                if id == 0 {
                    try LegacyPlatform.setEntryState(vcpu, kernel.entry, memory: memory)
                }
                runners.append(VCPURunner(vcpu: vcpu, ports: ports, mmio: mmio, memory: memory,
                                          hypercalls: handler, stop: stop, trace: config.trace,
                                          timeline: id == 0 ? timeline : nil, syncRegs: syncRegs))
            }
            return runners
        }
        return MachineParts(host: host, vm: vm, memory: memory, kernel: kernel, ports: ports, mmio: mmio,
                            console: console, monitor: monitor, consoleLogFD: logFD, serial: serial, stop: stop,
                            timeline: timeline, devices: devices, runners: runners)
    }

    /// The console and what watches it. Bad patterns and an unwritable log file are usage errors.
    static func watchedConsole(_ config: MachineConfig, stop: StopController,
                               timeline: Timeline) throws(MachineError) -> (Console, ConsoleMonitor, Int32?) {
        let monitor: ConsoleMonitor
        do {
            monitor = try ConsoleMonitor(expect: config.expect, failOn: config.failOn,
                                         detectPanic: config.detectPanic, stop: stop, timeline: timeline)
        } catch {
            throw .usage(error.description)
        }
        var logFD: Int32?
        if let path = config.consoleLogPath {
            let fd = openOutputFile(path)
            guard fd >= 0 else { throw .usage("--console-log=\(path): \(errorString(errno))") }
            logFD = fd
        }
        return (Console(fd: config.consoleFD, quiet: config.quiet, logFD: logFD, monitor: monitor, timeline: timeline), monitor, logFD)
    }

    /// /dev/kvm and a VM (its interrupt controllers come after its memory: see `guestRAM`).
    static func kvm(_ config: MachineConfig) throws(MachineError) -> (KVMHost, VirtualMachine) {
        guard config.cpus >= 1 else { throw .usage("--cpus must be at least 1") }
        // The MP table and MADT give each CPU an 8-bit local APIC ID, and the I/O APIC the next.
        guard config.cpus <= MachineConfig.maxCPUs else { throw .usage("--cpus can be at most \(MachineConfig.maxCPUs)") }
        return try kvmStep { () throws -> (KVMHost, VirtualMachine) in
            let host = try KVMHost()
            if config.cpus > host.recommendedVCPUs {
                throw KVMError.tooManyVCPUs(requested: config.cpus, allowed: host.recommendedVCPUs)
            }
            let vm = try host.createVM()
            try vm.setTSSAddress(BootLayout.tssAddress)
            try vm.setIdentityMapAddress(BootLayout.identityMapAddress)
            return (host, vm)
        }
    }

    /// Guest RAM, registered with KVM slot by slot so the hypercall page can be read-only, the
    /// page itself, and then the in-kernel interrupt controllers and timer.
    static func guestRAM(_ config: MachineConfig, vm: VirtualMachine) throws(MachineError) -> GuestMemory {
        let memory: GuestMemory
        do {
            memory = try GuestMemory(size: config.memory.bytes, readOnlyRanges: [hypercallPage])
        } catch {
            throw .memory(error.description)
        }
        try kvmStep { () throws in
            var slot: UInt32 = 0
            for region in memory.regions {
                for piece in slots(for: region, readOnly: memory.readOnlyRanges) {
                    try vm.setMemoryRegion(slot: slot, guestAddress: piece.range.lowerBound,
                                           size: UInt64(piece.range.count),
                                           host: region.host + Int(piece.range.lowerBound - region.guestAddress),
                                           readOnly: piece.readOnly)
                    slot += 1
                }
            }
            try memory.write(HypercallPage.build(abiVersion: SwiftVMMVersion.hypercallABI), at: HypercallPage.address)
            // The in-kernel interrupt controllers and timer only now: on these hosts the
            // first memory slot of a VM that already has an irqchip costs ~5 ms, before it
            // costs ~0.3 ms (measured with a C program; see docs/benchmarks.md).
            try vm.createIRQChip()
            try vm.createPIT()
        }
        return memory
    }

    static let hypercallPage = HypercallPage.address ..< HypercallPage.address + UInt64(HypercallPage.size)

    /// The kernel, its command line and boot data. A bad file has its own exit code.
    static func loadKernel(_ config: MachineConfig, into memory: GuestMemory) throws(MachineError) -> LoadedKernel {
        do {
            return try KernelLoader.load(path: config.kernelPath, into: memory, options: BootOptions(
                commandLine: config.commandLine, initrdPath: config.initrdPath, initrdData: config.initrdData,
                entry: config.entry, reserved: [hypercallPage], addSerialConsole: config.addSerialConsole,
                acpiRSDP: BootLayout.acpiRSDP))
        } catch {
            throw .boot(error.description, exitCode: error.exitCode)
        }
    }

    /// One place that says what a failure while talking to KVM means for the exit code: KVM
    /// missing or too old (69), more vCPUs than the host allows (a usage error, 64), anything
    /// else swiftvmm's own failure (70).
    static func kvmStep<T>(_ body: () throws -> T) throws(MachineError) -> T {
        do {
            return try body()
        } catch let e as KVMError {
            switch e {
            case .unavailable, .apiVersion, .missingCapability:
                throw .kvm(e.description, exitCode: ExitStatus.kvmUnavailable)
            case .tooManyVCPUs:
                throw .kvm(e.description, exitCode: ExitStatus.usage)
            default:
                throw .kvm(e.description, exitCode: ExitStatus.vmmError)
            }
        } catch let e as MachineError {
            throw e
        } catch {
            throw .setup("\(error)")
        }
    }

    /// Split a RAM region into KVM slots around the read-only ranges inside it.
    static func slots(for region: GuestRegion, readOnly: [Range<UInt64>]) -> [(range: Range<UInt64>, readOnly: Bool)] {
        var pieces: [(Range<UInt64>, Bool)] = []
        var cursor = region.guestAddress
        for ro in readOnly.sorted(by: { $0.lowerBound < $1.lowerBound })
        where ro.lowerBound >= cursor && ro.upperBound <= region.guestEnd {
            if ro.lowerBound > cursor { pieces.append((cursor ..< ro.lowerBound, false)) }
            pieces.append((ro, true))
            cursor = ro.upperBound
        }
        if cursor < region.guestEnd { pieces.append((cursor ..< region.guestEnd, false)) }
        return pieces
    }

    /// What firmware does on a PC: LINT0 receives the 8259 PIC's interrupts (ExtINT) and
    /// LINT1 NMIs. Without this the LAPIC ignores the PIC and no legacy IRQ (like the
    /// serial port's) reaches a guest that has not set up its IOAPIC.
    static func wireLocalInterrupts(_ vcpu: VCPU) throws(KVMError) {
        var lapic = try vcpu.lapic()
        withUnsafeMutableBytes(of: &lapic.regs) { regs in
            let lvt0 = 0x350, lvt1 = 0x360
            let extINT: UInt32 = 0x700, nmi: UInt32 = 0x400, deliveryMask: UInt32 = 0x700, masked: UInt32 = 1 << 16
            let l0 = regs.loadUnaligned(fromByteOffset: lvt0, as: UInt32.self)
            regs.storeBytes(of: (l0 & ~(deliveryMask | masked)) | extINT, toByteOffset: lvt0, as: UInt32.self)
            let l1 = regs.loadUnaligned(fromByteOffset: lvt1, as: UInt32.self)
            regs.storeBytes(of: (l1 & ~(deliveryMask | masked)) | nmi, toByteOffset: lvt1, as: UInt32.self)
        }
        try vcpu.setLAPIC(lapic)
    }
}
