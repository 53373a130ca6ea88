import Boot
import CKVM
import Devices
import Glibc
import Hypercalls
import KVM
import Lifecycle
import Memory

/// A VM assembled from a `MachineConfig`: KVM objects, guest RAM, the kernel loaded, devices on
/// their buses, vCPUs ready at the kernel's entry. `run()` starts it and returns how it ended.
public final class GuestMachine: @unchecked Sendable {
    public let config: MachineConfig
    public let kernel: LoadedKernel
    let host: KVMHost
    let vm: VirtualMachine
    let memory: GuestMemory
    let ports = IOBus(name: "port I/O")
    let mmio = IOBus(name: "MMIO")
    let console: Console
    let serial: Serial16550
    let stop = StopController()
    let runners: [VCPURunner]

    /// The signal that kicks vCPU threads out of KVM_RUN.
    static let kickSignal = SIGUSR1

    public init(config: MachineConfig, console: Console = Console()) throws(MachineError) {
        self.config = config
        self.console = console
        // KVM: the system, a VM, and the in-kernel interrupt controllers and timer.
        do {
            host = try KVMHost()
            if config.cpus < 1 {
                throw MachineError.setup("--cpus must be at least 1")
            }
            if config.cpus > host.recommendedVCPUs {
                throw KVMError.tooManyVCPUs(requested: config.cpus, allowed: host.recommendedVCPUs)
            }
            vm = try host.createVM()
            try vm.setTSSAddress(BootLayout.tssAddress)
            try vm.setIdentityMapAddress(BootLayout.identityMapAddress)
            try vm.createIRQChip()
            try vm.createPIT()
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

        // Guest RAM, registered with KVM slot by slot so the hypercall page can be read-only.
        let hypercallPage = HypercallPage.address ..< HypercallPage.address + UInt64(HypercallPage.size)
        do {
            memory = try GuestMemory(size: config.memory.bytes, readOnlyRanges: [hypercallPage])
        } catch {
            throw .memory(error.description)
        }
        do {
            var slot: UInt32 = 0
            for region in memory.regions {
                for piece in Self.slots(for: region, readOnly: memory.readOnlyRanges) {
                    try vm.setMemoryRegion(slot: slot, guestAddress: piece.range.lowerBound,
                                           size: UInt64(piece.range.count),
                                           host: region.host + Int(piece.range.lowerBound - region.guestAddress),
                                           readOnly: piece.readOnly)
                    slot += 1
                }
            }
            try memory.write(HypercallPage.build(abiVersion: SwiftVMMVersion.hypercallABI), at: HypercallPage.address)
        } catch let e as KVMError {
            throw .kvm(e.description, exitCode: ExitStatus.vmmError)
        } catch {
            throw .setup("\(error)")
        }

        // The kernel, its command line and boot data.
        do {
            kernel = try KernelLoader.load(path: config.kernelPath, into: memory, options: BootOptions(
                commandLine: config.commandLine, initrdPath: config.initrdPath, entry: config.entry,
                reserved: [hypercallPage], addSerialConsole: config.addSerialConsole))
        } catch {
            throw .boot(error.description, exitCode: error.exitCode)
        }

        // Devices.
        serial = Serial16550(irq: IRQLine(vm: vm, gsi: Serial16550.com1IRQ), console: console)
        do {
            try ports.register(serial, at: Serial16550.com1Port, length: Serial16550.portCount)
            try LegacyPlatform.register(on: ports, stop: stop)
        } catch {
            throw .setup(error.description)
        }

        // vCPUs, each placed at the kernel's entry.
        let handler = HypercallHandler(memory: memory, console: console, stop: stop)
        var runners: [VCPURunner] = []
        do {
            let supported = try host.supportedCPUID()
            try LegacyPlatform.writeMPTable(into: memory, cpus: config.cpus, supportedCPUID: supported)
            for id in 0..<config.cpus {
                let vcpu = try vm.createVCPU(id: id)
                try vcpu.setCPUID(CPUID.entries(supported: supported, vcpuID: id, vcpuCount: config.cpus,
                                                pvmHost: config.pvmHost))
                try Self.wireLocalInterrupts(vcpu)
                try vcpu.setMSRs(BootMSRs.entries)
                // The bootstrap processor starts at the kernel's entry; the others wait in
                // the in-kernel LAPIC for the INIT/SIPI the kernel sends them.
                if id == 0 {
                    try LegacyPlatform.setEntryState(vcpu, kernel.entry, memory: memory)
                }
                runners.append(VCPURunner(vcpu: vcpu, ports: ports, mmio: mmio, memory: memory,
                                          hypercalls: handler, stop: stop, trace: config.trace))
            }
        } catch let e as KVMError {
            throw .kvm(e.description, exitCode: ExitStatus.vmmError)
        } catch {
            throw .setup("\(error)")
        }
        self.runners = runners
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

    /// Counters gathered over the run, for `--verbose` and reports.
    public struct Statistics: Sendable {
        public var exitsByReason: [String: UInt64] = [:]
        public var hypercallsByNumber: [UInt64: UInt64] = [:]
        public var deviceAccesses: [String: (reads: UInt64, writes: UInt64)] = [:]
        public var unclaimedPortAccesses: UInt64 = 0
        public var unclaimedMMIOAccesses: UInt64 = 0
        public var guestErrors: UInt64 = 0
    }

    /// End the run from outside (signals, timeouts). The first outcome reported wins.
    public func requestStop(_ outcome: Outcome) { stop.stop(outcome) }

    /// Run the guest until something ends it; returns the outcome. Call once.
    public func run() -> (outcome: Outcome, statistics: Statistics) {
        _ = skvm_install_kick_handler(Self.kickSignal)
        var threads: [HostThread] = []
        for runner in runners {
            threads.append(HostThread.start(name: "vcpu\(runner.vcpu.id)") {
                // The kick must get through even if swiftvmm was started with it blocked
                // (signal masks are inherited: a test harness may block nearly everything).
                // An AP waiting for its SIPI sleeps in KVM_RUN and only a signal wakes it.
                var kick = sigset_t()
                sigemptyset(&kick)
                sigaddset(&kick, GuestMachine.kickSignal)
                pthread_sigmask(SIG_UNBLOCK, &kick, nil)
                runner.run()
            })
        }
        var inputThread: HostThread?
        let input = ConsoleInput(serial: serial, stop: stop)
        if config.consoleInput {
            input.enterRawMode()
            inputThread = input.start()
        }
        let outcome = stop.wait()
        // Kick every vCPU out of KVM_RUN: immediate_exit covers one about to enter, the signal
        // one already inside.
        for (runner, thread) in zip(runners, threads) {
            runner.vcpu.requestImmediateExit()
            thread.signal(Self.kickSignal)
        }
        for thread in threads { thread.join() }
        inputThread?.join()
        ConsoleInput.restoreTerminal()
        return (outcome, statistics())
    }

    func statistics() -> Statistics {
        var s = Statistics()
        for r in runners {
            for i in 0..<VCPURunner.exitReasonSlots where r.exitCounts[i] > 0 {
                s.exitsByReason[FaultReport.exitReasonName(UInt32(i)), default: 0] += r.exitCounts[i]
            }
            for i in 0...HypercallPage.stubCount where r.hypercallCounts[i] > 0 {
                s.hypercallsByNumber[UInt64(i), default: 0] += r.hypercallCounts[i]
            }
            s.guestErrors += r.guestErrors
        }
        for bus in [ports, mmio] {
            for d in bus.devices {
                s.deviceAccesses[d.device.name] = (d.device.reads.load(ordering: .relaxed), d.device.writes.load(ordering: .relaxed))
            }
        }
        s.unclaimedPortAccesses = ports.unclaimedReads.load(ordering: .relaxed) + ports.unclaimedWrites.load(ordering: .relaxed)
        s.unclaimedMMIOAccesses = mmio.unclaimedReads.load(ordering: .relaxed) + mmio.unclaimedWrites.load(ordering: .relaxed)
        return s
    }
}
