import CKVM
import CrashReports
import Devices
import Glibc
import HostSupport
import Hypercalls
import KVM
import Memory
import RunControl
import Synchronization

/// The vCPU loop: enter the guest, take the exit, hand it to whoever serves it, repeat.
///
/// This is the hot path. Per exit it does one KVM_RUN system call, reads a few fields of the shared
/// `kvm_run` page through the shim's accessors, and makes one call through a device's vtable;
/// no allocation, no existential or closure dispatch, no logging unless tracing is on.
/// Anything slow (reports, formatting) happens only when the run is ending.
///
/// Following one guest `out` through the code: guest `out` → KVM_EXIT_IO → the inline path
/// in `run` (the port's slot in `IOBus.portSlots`) → the device's `write` → back into KVM_RUN.
/// Unchecked Sendable: its counters are plain memory that only its own thread writes, read by
/// reports once that thread has finished (a lock or atomics per exit would cost the hot path).
final class VCPURunner: @unchecked Sendable {
    let vcpu: VCPU
    let ports: IOBus
    let mmio: IOBus
    let memory: GuestMemory
    let hypercalls: HypercallHandler
    let stop: StopController
    // The trace switches as plain Bools, read once per exit without calls into RunControl.
    let traceExits: Bool
    let traceIO: Bool
    let traceHypercalls: Bool
    let traceGuestErrors: Bool
    /// KVM copies the general registers into kvm_run on every exit (KVM_CAP_SYNC_REGS), so a
    /// hypercall reads its arguments without an ioctl.
    let syncRegs: Bool
    /// Set for the boot vCPU only: it records when the guest first runs.
    let timeline: Timeline?

    /// Per-vCPU counters, owned by this vCPU's thread while it runs (read after it is joined).
    static let exitReasonSlots = 64
    let exitCounts = UnsafeMutablePointer<UInt64>.allocate(capacity: VCPURunner.exitReasonSlots)
    let hypercallCounts = UnsafeMutablePointer<UInt64>.allocate(capacity: HypercallPage.stubCount + 1)
    /// Guest errors absorbed: unclaimed ports/MMIO, writes to read-only memory.
    var guestErrors: UInt64 = 0
    var unclaimedPortAccesses: UInt64 = 0
    var unclaimedMMIOAccesses: UInt64 = 0

    init(vcpu: VCPU, ports: IOBus, mmio: IOBus, memory: GuestMemory, hypercalls: HypercallHandler,
         stop: StopController, trace: TraceOptions, timeline: Timeline?, syncRegs: Bool) {
        self.vcpu = vcpu
        self.ports = ports
        self.mmio = mmio
        self.memory = memory
        self.hypercalls = hypercalls
        self.stop = stop
        traceExits = trace.contains(.exits)
        traceIO = trace.contains(.io)
        traceHypercalls = trace.contains(.hypercalls)
        traceGuestErrors = trace.contains(.guestErrors)
        self.timeline = timeline
        self.syncRegs = syncRegs
        exitCounts.initialize(repeating: 0, count: Self.exitReasonSlots)
        hypercallCounts.initialize(repeating: 0, count: HypercallPage.stubCount + 1)
    }

    deinit {
        exitCounts.deallocate()
        hypercallCounts.deallocate()
    }

    /// Set when `run` has returned, so the machine knows when to stop kicking this vCPU.
    let finished = Atomic<Bool>(false)

    func run() {
        defer { finished.store(true, ordering: .releasing) }
        // The kick must reach this thread even if our parent started us with it blocked
        // (signal masks are inherited across exec; test runners do this).
        var kick = sigset_t()
        sigemptyset(&kick)
        sigaddset(&kick, GuestMachine.kickSignal)
        pthread_sigmask(SIG_UNBLOCK, &kick, nil)
        let fd = vcpu.fd
        let run = vcpu.run
        if syncRegs { skvm_set_valid_regs(run, SKVM_SYNC_X86_REGS) }
        timeline?.markFirstGuestEntry()
        // The stop flag is looked at only when KVM_RUN is interrupted: whoever ends the run
        // reports to the StopController, and the machine then kicks every vCPU out of
        // KVM_RUN, so a vCPU never re-enters the guest for long after the end.
        if stop.isStopping { return }
        // Hoisted so the loop keeps them in registers rather than reloading them via self.
        let portSlots = ports.portSlots!
        let tracing = traceExits || traceIO
        let hypercallHeader = Self.hypercallHeader
        while true {
            let status = skvm_run_vcpu(fd)
            if status < 0 {
                let e = Int32(-status)
                // EINTR: kicked (stop) or a stray signal. EAGAIN: an application processor
                // still waiting for its INIT/SIPI. Either way, look at the stop flag and retry.
                if e == EINTR || e == EAGAIN {
                    if stop.isStopping { return }
                    continue
                }
                stop.stop(.vmmError("KVM_RUN on vCPU \(vcpu.id) failed: \(errorString(e))"))
                return
            }
            let reason = skvm_exit_reason(run)
            exitCounts[Int(min(reason, UInt32(Self.exitReasonSlots - 1)))] &+= 1
            // The common exit, a single port access with tracing off, is handled inline:
            // one load of the io header, one table load for the device, one vtable call.
            if reason == SKVM_EXIT_IO && !tracing {
                let header = skvm_io_header(run)
                if header == hypercallHeader {
                    let number = UnsafeRawPointer(skvm_io_data(run)!).loadUnaligned(as: UInt32.self)
                    if !handleHypercall(number: UInt64(number), fd) { return }
                    continue
                }
                if header >> 32 == 1 {
                    let port = Int(truncatingIfNeeded: (header >> 16) & 0xFFFF)
                    let slot = portSlots[port]
                    if let device = slot.device {
                        let size = Int(truncatingIfNeeded: (header >> 8) & 0xFF)
                        let data = UnsafeMutableRawPointer(skvm_io_data(run)!)
                        let offset = UInt64(truncatingIfNeeded: port &- Int(slot.base))
                        let isWrite = header & 0xFF == UInt64(SKVM_EXIT_IO_OUT)
                        _ = device._withUnsafeGuaranteedRef {
                            access($0, offset: offset, size: size, isWrite: isWrite, data: data)
                        }
                        // A device may have just ended the run (a reset, debug-exit, a panic
                        // line on the console): do not give the guest another instruction.
                        if stop.stopping.load(ordering: .relaxed) { return }
                        continue
                    }
                }
            }
            if traceExits { traceExit(reason, run) }
            switch reason {
            case SKVM_EXIT_IO:
                if !handleIO(run, fd) { return }
            case SKVM_EXIT_MMIO:
                if !handleMMIO(run) { return }
            case SKVM_EXIT_INTR:
                continue
            default:
                handleFatalExit(reason, run)
                return
            }
        }
    }

    /// `skvm_io_header` of the exit a hypercall stub makes: `out %eax, $port`, 4 bytes, once.
    static let hypercallHeader: UInt64 = UInt64(SKVM_EXIT_IO_OUT) | 4 << 8 | UInt64(HypercallPage.port) << 16 | 1 << 32

    /// One access to a device: counted, then served; returns the value written or read.
    @inline(__always)
    private func access(_ device: BusDevice, offset: UInt64, size: Int, isWrite: Bool,
                        data: UnsafeMutableRawPointer) -> UInt64 {
        if isWrite {
            let value = loadLittleEndian(data, size)
            device.writes.wrappingAdd(1, ordering: .relaxed)
            device.write(offset: offset, size: size, value: value)
            return value
        }
        device.reads.wrappingAdd(1, ordering: .relaxed)
        let value = device.read(offset: offset, size: size)
        storeLittleEndian(value, data, size)
        return value
    }

    // MARK: Port I/O

    /// Every port exit the inline path above does not take: string I/O (`rep outsb`),
    /// unclaimed ports, and all exits while tracing.
    @inline(never)
    private func handleIO(_ run: UnsafeMutablePointer<kvm_run>, _ fd: Int32) -> Bool {
        let port = skvm_io_port(run)
        let size = Int(skvm_io_size(run))
        let count = Int(skvm_io_count(run))
        let data = UnsafeMutableRawPointer(skvm_io_data(run)!)
        let isWrite = skvm_io_direction(run) == SKVM_EXIT_IO_OUT
        if skvm_io_header(run) == Self.hypercallHeader {
            return handleHypercall(number: UInt64(data.loadUnaligned(as: UInt32.self)), fd)
        }
        if let (unretained, offset) = ports.find(UInt64(port)) {
            unretained._withUnsafeGuaranteedRef { device in
                for i in 0..<count {
                    let value = access(device, offset: offset, size: size, isWrite: isWrite, data: data + i * size)
                    if traceIO { traceAccess(isWrite ? "out" : "in ", port: UInt64(port), size: size, value: value, device: device) }
                }
            }
            // A device may have just ended the run (a reset, debug-exit, a panic line on the
            // console): do not give the guest another instruction.
            return !stop.stopping.load(ordering: .relaxed)
        } else {
            // Nobody there: reads float high, writes vanish, as on a real ISA bus.
            if !isWrite { data.initializeMemory(as: UInt8.self, repeating: 0xFF, count: size * count) }
            unclaimedPortAccesses &+= 1
            guestErrors &+= 1
            if traceIO || traceGuestErrors {
                traceAccess(isWrite ? "out" : "in ", port: UInt64(port), size: size,
                            value: isWrite ? loadLittleEndian(data, size) : ~0, device: nil)
            }
        }
        return true
    }

    // MARK: Hypercalls

    /// The stub wrote the call's number; its arguments are in the guest's registers.
    @inline(never)
    private func handleHypercall(number: UInt64, _ fd: Int32) -> Bool {
        // The arguments are in the guest's registers: in kvm_run already when KVM syncs them
        // there (KVM_CAP_SYNC_REGS), else fetched with KVM_GET_REGS.
        let run = vcpu.run
        let synced = syncRegs ? skvm_sync_regs(run) : nil
        var regs = synced?.pointee ?? kvm_regs()
        if synced == nil {
            guard skvm_ioctl_ptr(fd, SKVM_GET_REGS, &regs) == 0 else {
                stop.stop(.vmmError("KVM_GET_REGS on vCPU \(vcpu.id) failed: \(errorString(skvm_errno()))"))
                return false
            }
        }
        hypercallCounts[Int(min(number, UInt64(HypercallPage.stubCount)))] &+= 1
        let args = HypercallArguments(regs.rdi, regs.rsi, regs.rdx, regs.rcx, regs.r8)
        var started = timespec()
        if traceHypercalls { clock_gettime(CLOCK_MONOTONIC, &started) }
        let result = hypercalls.dispatch(number: number, args)
        if traceHypercalls { traceHypercall(number, args, result, started) }
        switch result {
        case .resume(let value):
            if let synced {
                // Loaded back into the vCPU on the next KVM_RUN.
                synced.pointee.rax = value
                skvm_set_dirty_regs(run, SKVM_SYNC_X86_REGS)
            } else {
                regs.rax = value
                guard skvm_ioctl_ptr(fd, SKVM_SET_REGS, &regs) == 0 else {
                    stop.stop(.vmmError("KVM_SET_REGS on vCPU \(vcpu.id) failed: \(errorString(skvm_errno()))"))
                    return false
                }
            }
            // A console write may have decided the run (a panic line, an --expect match).
            return !stop.stopping.load(ordering: .relaxed)
        case .stopVCPU:
            return false
        }
    }

    // MARK: MMIO

    @inline(never)
    private func handleMMIO(_ run: UnsafeMutablePointer<kvm_run>) -> Bool {
        let address = skvm_mmio_address(run)
        let size = Int(skvm_mmio_length(run))
        let data = UnsafeMutableRawPointer(skvm_mmio_data(run)!)
        let isWrite = skvm_mmio_is_write(run) != 0
        if let (unretained, offset) = mmio.find(address) {
            unretained._withUnsafeGuaranteedRef { device in
                let value = access(device, offset: offset, size: size, isWrite: isWrite, data: data)
                if traceIO {
                    traceAccess(isWrite ? "mmio-w" : "mmio-r", port: address, size: size, value: value, device: device)
                }
            }
            return !stop.stopping.load(ordering: .relaxed)
        }
        guestErrors &+= 1
        unclaimedMMIOAccesses &+= 1
        if isWrite {
            // A write into a read-only slot (the hypercall page) lands here: dropped.
            if traceIO || traceGuestErrors {
                let what = memory.contains(address, count: UInt64(size)) ? "write to read-only guest memory" : "write to unclaimed MMIO"
                Diagnostics.line("swiftvmm: vcpu\(vcpu.id): \(what) at \(Diagnostics.hex(address)) (\(size) bytes) ignored")
            }
        } else {
            data.initializeMemory(as: UInt8.self, repeating: 0xFF, count: min(size, 8))
            if traceIO || traceGuestErrors {
                Diagnostics.line("swiftvmm: vcpu\(vcpu.id): read from unclaimed MMIO at \(Diagnostics.hex(address)) (\(size) bytes)")
            }
        }
        return true
    }

    // MARK: The end of a run

    /// Exits that end the VM. Formatting and register reads are fine here: this happens once.
    @inline(never)
    private func handleFatalExit(_ reason: UInt32, _ run: UnsafeMutablePointer<kvm_run>) {
        switch reason {
        case SKVM_EXIT_SYSTEM_EVENT:
            switch skvm_system_event_type(run) {
            case SKVM_SYSTEM_EVENT_SHUTDOWN: stop.stop(.shutdown); return
            case SKVM_SYSTEM_EVENT_RESET: stop.stop(.reboot); return
            default: break
            }
        default:
            break
        }
        let report = FaultReport(vcpu: vcpu, memory: memory, reason: reason, run: run)
        stop.stop(.guestFault(summary: report.summary, report: report.text))
    }

    // MARK: Tracing (off the fast path: only reached when a trace flag is set)

    @inline(never)
    private func traceExit(_ reason: UInt32, _ run: UnsafeMutablePointer<kvm_run>) {
        var line = "swiftvmm: vcpu\(vcpu.id) exit \(FaultReport.exitReasonName(reason))"
        if reason == SKVM_EXIT_IO {
            line += " port=\(Diagnostics.hex(skvm_io_port(run))) \(skvm_io_direction(run) == SKVM_EXIT_IO_OUT ? "out" : "in") size=\(skvm_io_size(run))"
        } else if reason == SKVM_EXIT_MMIO {
            line += " addr=\(Diagnostics.hex(skvm_mmio_address(run))) \(skvm_mmio_is_write(run) != 0 ? "write" : "read") len=\(skvm_mmio_length(run))"
        }
        Diagnostics.line(line)
    }

    @inline(never)
    private func traceAccess(_ kind: String, port: UInt64, size: Int, value: UInt64, device: BusDevice?) {
        let mask: UInt64 = size >= 8 ? ~0 : (1 << UInt64(size * 8)) - 1
        Diagnostics.line("swiftvmm: vcpu\(vcpu.id) \(kind) \(Diagnostics.hex(port, width: 4)) size=\(size) value=\(Diagnostics.hex(value & mask)) -> \(device?.name ?? "unclaimed")")
    }

    @inline(never)
    private func traceHypercall(_ number: UInt64, _ args: HypercallArguments, _ result: HypercallHandler.Result, _ started: timespec) {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let ns = Int64(now.tv_sec - started.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec - started.tv_nsec)
        let value: String
        switch result {
        case .resume(let v): value = Int64(bitPattern: v) < 0 ? "\(Int64(bitPattern: v))" : Diagnostics.hex(v)
        case .stopVCPU: value = "(does not return)"
        }
        Diagnostics.line("swiftvmm: vcpu\(vcpu.id) hypercall #\(number) \(HypercallHandler.describe(number: number, args)) = \(value) [\(ns) ns]")
    }
}

@inline(__always)
func loadLittleEndian(_ p: UnsafeRawPointer, _ size: Int) -> UInt64 {
    switch size {
    case 1: return UInt64(p.load(as: UInt8.self))
    case 2: return UInt64(UInt16(littleEndian: p.loadUnaligned(as: UInt16.self)))
    case 4: return UInt64(UInt32(littleEndian: p.loadUnaligned(as: UInt32.self)))
    default: return UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
    }
}

@inline(__always)
func storeLittleEndian(_ value: UInt64, _ p: UnsafeMutableRawPointer, _ size: Int) {
    switch size {
    case 1: p.storeBytes(of: UInt8(truncatingIfNeeded: value), as: UInt8.self)
    case 2: p.storeBytes(of: UInt16(truncatingIfNeeded: value).littleEndian, as: UInt16.self)
    case 4: p.storeBytes(of: UInt32(truncatingIfNeeded: value).littleEndian, as: UInt32.self)
    default: p.storeBytes(of: value.littleEndian, as: UInt64.self)
    }
}
