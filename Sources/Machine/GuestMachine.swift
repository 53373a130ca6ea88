import CKVM
internal import CTeardown
import CrashReports
import Devices
import Glibc
import HostSupport
import Hypercalls
import KVM
import KernelLoading
import Memory
import RunControl
import X86Platform

/// A VM assembled from a `MachineConfig`: KVM objects, guest RAM, the kernel loaded, devices on
/// their buses, vCPUs ready at the kernel's entry. `run()` starts it and returns how it ended.
public final class GuestMachine: @unchecked Sendable {
    public let config: MachineConfig
    public let kernel: LoadedKernel
    let host: KVMHost
    let vm: VirtualMachine
    let memory: GuestMemory
    let ports = IOBus(name: "port I/O", portSpace: true)
    let mmio = IOBus(name: "MMIO")
    let console: Console
    let monitor: ConsoleMonitor
    let serial: Serial16550
    let stop = StopController()
    public let timeline: Timeline
    let runners: [VCPURunner]
    private let consoleLogFD: Int32?
    let devices: MachineDevices

    /// The signal that kicks vCPU threads out of KVM_RUN.
    static let kickSignal = SIGUSR1

    public init(config: MachineConfig) throws(MachineError) {
        self.config = config
        timeline = Timeline(start: config.startTime ?? monotonicNanoseconds())
        // The console and what watches it, first: bad patterns or an unwritable log file are
        // usage errors, reported before anything is built.
        do {
            monitor = try ConsoleMonitor(expect: config.expect, failOn: config.failOn,
                                         detectPanic: config.detectPanic, stop: stop, timeline: timeline)
        } catch {
            throw .usage(error.description)
        }
        if let path = config.consoleLogPath {
            let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw .usage("--console-log=\(path): \(errorString(errno))") }
            consoleLogFD = fd
        } else {
            consoleLogFD = nil
        }
        console = Console(quiet: config.quiet, logFD: consoleLogFD, monitor: monitor, timeline: timeline)
        // KVM: the system and a VM (its interrupt controllers come after its memory, below).
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
            // The in-kernel interrupt controllers and timer only now: on these hosts the
            // first memory slot of a VM that already has an irqchip costs ~5 ms, before it
            // costs ~0.3 ms (measured with a C program; see docs/benchmarks.md).
            try vm.createIRQChip()
            try vm.createPIT()
        } catch let e as KVMError {
            throw .kvm(e.description, exitCode: ExitStatus.vmmError)
        } catch {
            throw .setup("\(error)")
        }

        // The kernel, its command line and boot data.
        do {
            kernel = try KernelLoader.load(path: config.kernelPath, into: memory, options: BootOptions(
                commandLine: config.commandLine, initrdPath: config.initrdPath, entry: config.entry,
                reserved: [hypercallPage], addSerialConsole: config.addSerialConsole, acpiRSDP: BootLayout.acpiRSDP))
        } catch {
            throw .boot(error.description, exitCode: error.exitCode)
        }

        // Devices.
        serial = Serial16550(irq: IRQLine(sink: KVMInterrupts(vm: vm), line: Serial16550.com1IRQ), console: console)
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

        devices = try MachineDevices(config: config.virtio, vm: vm, memory: memory, ports: ports, mmio: mmio,
                                     stop: stop, trace: config.trace)
        // Every device is on its bus: from here the buses are only read, by vCPUs, unlocked.
        ports.seal()
        mmio.seal()

        // vCPUs, each placed at the kernel's entry.
        let handler = HypercallHandler(memory: memory, console: console, stop: stop)
        var runners: [VCPURunner] = []
        let syncRegs = config.syncRegisters
            && UInt64(host.capability(SKVM_CAP_SYNC_REGS)) & SKVM_SYNC_X86_REGS != 0
        do {
            let supported = try host.supportedCPUID()
            try LegacyPlatform.writeMPTable(into: memory, cpus: config.cpus, supportedCPUID: supported)
            try LegacyPlatform.writeACPITables(into: memory, cpus: config.cpus, pciInterrupts: devices.pciInterrupts)
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
                                          hypercalls: handler, stop: stop, trace: config.trace,
                                          timeline: id == 0 ? timeline : nil, syncRegs: syncRegs))
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
        /// One line per virtio device (requests, interrupts, guest errors).
        public var deviceReports: [String] = []
    }

    /// End the run from outside (signals, timeouts). The first outcome reported wins.
    public func requestStop(_ outcome: Outcome) { stop.stop(outcome) }

    deinit { if let fd = consoleLogFD { close(fd) } }

    /// Everything known about a finished run.
    public struct RunResult: Sendable {
        public let outcome: Outcome
        public let statistics: Statistics
        /// Registers and stacks of every vCPU, for runs that ended badly.
        public let crash: CrashReport?
        /// The last oops the console showed, its frames resolved to source lines if possible.
        public let oops: DecodedOops?
        /// `--expect` patterns matched before the end.
        public let expectationsMatched: Int
        /// For a timeout: where interrupts stand (UART, IOAPIC, local APICs), the first
        /// thing to look at when a guest sits in `hlt` waiting for one.
        public let interrupts: String?
    }

    /// Run the guest until something ends it; returns the outcome. Call once.
    /// Call last, right before the process exits: hands the VM's teardown to a helper process
    /// so this one can be reaped at once. Tearing a KVM VM down waits for SRCU grace periods
    /// (the mmu notifier on our address space, the irqchip, the PIT), 10-25 ms on our hosts,
    /// and it happens in the exit of the last user of the address space: without the helper
    /// that is us, and a CI job waiting for swiftvmm's exit status waits for it. The helper
    /// shares the address space, holds only the VM and vCPU fds (it closes the terminal,
    /// pipes, disks and taps at once), and exits when we have. If it cannot be started,
    /// nothing changes: the process tears the VM down itself (as it does under valgrind).
    public func leaveTeardownToHelper() {
        // Valgrind cannot run a CLONE_VM process that is not a thread (it aborts the run):
        // under it, tear down the usual way.
        if let preload = getenv("LD_PRELOAD"), String(cString: preload).contains("vgpreload") { return }
        let keep = [vm.fd] + runners.map { $0.vcpu.fd }   // the helper sorts them
        _ = keep.withUnsafeBufferPointer { sys_start_teardown_helper($0.baseAddress, Int32($0.count)) }
    }

    public func run() -> RunResult {
        _ = skvm_install_kick_handler(Self.kickSignal)
        console.start()
        devices.start()
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
        var outcome = stop.wait(timeout: config.timeout)
        // Kick every vCPU out of KVM_RUN until its loop has returned: immediate_exit covers
        // one about to enter, the signal one already inside. Kick again until it is out: an
        // application processor still waiting for SIPI blocks inside KVM_RUN before KVM looks
        // at immediate_exit, so a signal that lands just before it blocks would be lost.
        let kickDeadline = monotonicNanoseconds() + 2_000_000_000
        while runners.contains(where: { !$0.finished.load(ordering: .acquiring) }) && monotonicNanoseconds() < kickDeadline {
            for (runner, thread) in zip(runners, threads) where !runner.finished.load(ordering: .acquiring) {
                runner.vcpu.requestImmediateExit()
                thread.signal(Self.kickSignal)
            }
            usleep(100)
        }
        for (runner, thread) in zip(runners, threads) {
            if runner.finished.load(ordering: .acquiring) {
                thread.join()
            } else {
                Diagnostics.line("swiftvmm: vCPU \(runner.vcpu.id) did not leave KVM_RUN within 2 s of being kicked; leaving it behind")
            }
        }
        devices.join()
        inputThread?.join()
        console.finish()
        ConsoleInput.restoreTerminal()
        timeline.markEnd()

        // A guest that ends on its own before every --expect matched has not met them.
        let progress = monitor.expectProgress
        if outcome.isGuestEnding, let next = progress.next {
            outcome = .expectationUnmet(pattern: next, after: outcome.summary)
        }
        var crash: CrashReport?
        var symbols: Symbolizer?
        let abnormal = !(outcome.isGuestEnding || outcome.name == "expect-matched")
        if abnormal || monitor.oops != nil { symbols = loadSymbols() }
        if abnormal {
            let stopped = runners.filter { $0.finished.load(ordering: .acquiring) }.map(\.vcpu)
            crash = CrashReport.capture(stopped, memory: memory, symbols: symbols)
        }
        var oops: DecodedOops?
        if let seen = monitor.oops {
            let lines = (config.debugVmlinuxPath ?? (isELF(config.kernelPath) ? config.kernelPath : nil)).flatMap(SourceLines.init(path:))
            oops = DecodedOops.decode(ripLine: seen.ripLine, callTrace: seen.frames, symbols: symbols ?? Symbolizer(symbols: []), lines: lines)
        }
        var interrupts: String?
        if outcome.name == "timeout" {
            interrupts = interruptReport(runners.filter { $0.finished.load(ordering: .acquiring) }.map(\.vcpu))
        }
        return RunResult(outcome: outcome, statistics: statistics(), crash: crash, oops: oops,
                         expectationsMatched: progress.matched, interrupts: interrupts)
    }

    /// The UART's registers and its line, the IOAPIC pins that are unmasked or have something
    /// latched, and each stopped vCPU's requested and in-service vectors.
    func interruptReport(_ vcpus: [VCPU]) -> String {
        let r = serial.registers
        var lines = ["  serial: IER=\(Diagnostics.hex(r.ier)) IIR=\(Diagnostics.hex(r.iir)) LCR=\(Diagnostics.hex(r.lcr)) MCR=\(Diagnostics.hex(r.mcr)) LSR=\(Diagnostics.hex(r.lsr)) line \(r.irq ? "high" : "low")"]
        for chip: UInt32 in 0...1 {
            guard let p = vm.picState(chip: chip) else { continue }
            func bits(_ b: UInt8) -> String { Diagnostics.hex(b, width: 2) }
            lines.append("  PIC \(chip == 0 ? "master" : "slave "): IRR=\(bits(p.irr)) IMR=\(bits(p.imr)) ISR=\(bits(p.isr)) lines=\(bits(p.lastIRR)) ELCR=\(bits(p.elcr)) vectors \(Diagnostics.hex(p.vectorBase))+\(p.autoEOI ? " auto-EOI" : "")")
        }
        if let io = vm.ioapicState() {
            var pins: [String] = []
            for (pin, e) in io.entries.enumerated() where e & (1 << 16) == 0 || io.irr & (1 << UInt32(pin)) != 0 {
                var d = "\(pin): vector \(Diagnostics.hex(e & 0xFF)) \(e & (1 << 15) != 0 ? "level" : "edge")"
                if e & (1 << 16) != 0 { d += " masked" }
                if e & (1 << 14) != 0 { d += " remote-IRR" }
                if io.irr & (1 << UInt32(pin)) != 0 { d += " IRR" }
                pins.append(d)
            }
            lines.append("  IOAPIC pins: \(pins.isEmpty ? "all masked, none pending" : pins.joined(separator: "; "))")
        }
        for vcpu in vcpus {
            guard let v = vcpu.pendingVectors() else { continue }
            func list(_ a: [UInt8]) -> String { a.isEmpty ? "none" : a.map { Diagnostics.hex($0) }.joined(separator: " ") }
            lines.append("  vCPU \(vcpu.id) local APIC: requested \(list(v.requested)); in service \(list(v.inService)); LVT0=\(Diagnostics.hex(v.lvt0)) SVR=\(Diagnostics.hex(v.spurious)) TPR=\(Diagnostics.hex(v.taskPriority))")
        }
        return lines.joined(separator: "\n")
    }

    /// Symbols for reports: --system-map, else the debug vmlinux, else the kernel if it is an ELF.
    func loadSymbols() -> Symbolizer? {
        if let map = config.systemMapPath, let bytes = try? readFile(map) {
            return Symbolizer(systemMap: String(decoding: bytes, as: UTF8.self))
        }
        for path in [config.debugVmlinuxPath, config.kernelPath].compactMap({ $0 }) where isELF(path) {
            if let bytes = try? readFile(path) {
                let s = Symbolizer(elf: bytes)
                if !s.isEmpty { return s }
            }
        }
        return nil
    }

    func isELF(_ path: String) -> Bool {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var magic: UInt32 = 0
        return read(fd, &magic, 4) == 4 && magic == 0x464C_457F
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
        s.guestErrors += devices.guestErrors
        s.deviceReports = devices.report
        for bus in [ports, mmio] {
            for d in bus.devices {
                s.deviceAccesses[d.device.name] = (d.device.reads.load(ordering: .relaxed), d.device.writes.load(ordering: .relaxed))
            }
        }
        s.unclaimedPortAccesses = runners.reduce(0) { $0 + $1.unclaimedPortAccesses }
        s.unclaimedMMIOAccesses = runners.reduce(0) { $0 + $1.unclaimedMMIOAccesses }
        return s
    }
}
