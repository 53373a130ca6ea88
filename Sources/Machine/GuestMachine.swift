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

/// A VM assembled from a `MachineConfig` (by `MachineBuilder`): KVM objects, guest RAM, the
/// kernel loaded, devices on their buses, vCPUs ready at the kernel's entry. `run()` starts it
/// and returns how it ended; the reports on a finished run are in GuestMachine+Reports.swift.
public final class GuestMachine: Sendable {
    public let config: MachineConfig
    public let kernel: LoadedKernel
    let host: KVMHost
    let vm: VirtualMachine
    let memory: GuestMemory
    let ports: IOBus
    let mmio: IOBus
    let console: Console
    let monitor: ConsoleMonitor
    let serial: Serial16550
    let stop: StopController
    public let timeline: Timeline
    let runners: [VCPURunner]
    private let consoleLogFD: Int32?
    let devices: MachineDevices

    /// The console's last lines (the kernel's log, the init's messages).
    public var recentConsoleLines: [String] { monitor.recentLines }

    /// Signalled when a virtio-console memory port collects bytes (nil: no virtio-console).
    public var consoleChanged: EventFD? { devices.console?.device.changed }

    /// What the virtio-console's memory port `name` collected (`swiftvmm exec`'s status port).
    public func collectedConsolePort(named name: String) -> [UInt8]? {
        guard let (device, _) = devices.console, let port = device.port(named: name) else { return nil }
        return device.collected(port: port)
    }

    /// The signal that kicks vCPU threads out of KVM_RUN.
    static let kickSignal = SIGUSR1
    /// How long the threads of a run have to end once its outcome is decided.
    static let shutdownNanoseconds: UInt64 = 2_000_000_000

    public init(config: MachineConfig) throws(MachineError) {
        let parts = try MachineBuilder.build(config)
        self.config = config
        kernel = parts.kernel
        host = parts.host
        vm = parts.vm
        memory = parts.memory
        ports = parts.ports
        mmio = parts.mmio
        console = parts.console
        monitor = parts.monitor
        serial = parts.serial
        stop = parts.stop
        timeline = parts.timeline
        runners = parts.runners
        consoleLogFD = parts.consoleLogFD
        devices = parts.devices
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

    /// Run the guest until something ends it; returns the outcome. Call once.
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
        // From the decision on, everything is bounded by one deadline: what has not ended by
        // then is reported and left behind (it goes when the process exits).
        let deadline = monotonicNanoseconds() + Self.shutdownNanoseconds
        console.abandonWaits()
        // Kick every vCPU out of KVM_RUN until its loop has returned: immediate_exit covers
        // one about to enter, the signal one already inside. Kick again until it is out: an
        // application processor still waiting for SIPI blocks inside KVM_RUN before KVM looks
        // at immediate_exit, so a signal that lands just before it blocks would be lost.
        while runners.contains(where: { !$0.finished.load(ordering: .acquiring) }) && monotonicNanoseconds() < deadline {
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
        for name in devices.join(until: deadline) {
            Diagnostics.line("swiftvmm: \(name)'s thread did not end within 2 s of the decision; leaving it behind")
        }
        devices.finishConsole(until: deadline)
        if let inputThread, !inputThread.join(until: deadline) {
            Diagnostics.line("swiftvmm: the console input thread did not end within 2 s of the decision; leaving it behind")
        }
        console.finish(waitingUpTo: max(0.05, Double(deadline &- min(deadline, monotonicNanoseconds())) / 1e9))
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
            oops = DecodedOops.decode(ripLine: seen.ripLine, callTrace: seen.frames, framesDropped: seen.framesDropped, symbols: symbols ?? Symbolizer(symbols: []), lines: lines)
        }
        var interrupts: String?
        if outcome.name == "timeout" {
            interrupts = interruptReport(runners.filter { $0.finished.load(ordering: .acquiring) }.map(\.vcpu))
        }
        return RunResult(outcome: outcome, statistics: statistics(), crash: crash, oops: oops,
                         expectationsMatched: progress.matched, interrupts: interrupts)
    }
}
