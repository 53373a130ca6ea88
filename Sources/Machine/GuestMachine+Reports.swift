import CrashReports
import Devices
import Glibc
import HostSupport
import Hypercalls
import KVM
import KernelLoading

/// What swiftvmm can say about a finished run: counters for `--verbose` and the report, the
/// interrupt controllers' state for a timeout, and the symbols crash reports are resolved with.
extension GuestMachine {
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
        guard case .success(let file) = openInputFile(path) else { return false }
        let fd = file.fd
        defer { close(fd) }
        var magic: UInt32 = 0
        return read(fd, &magic, 4) == 4 && magic == 0x464C_457F
    }

    func statistics() -> Statistics {
        var s = Statistics()
        // A vCPU left behind still runs: its counters are not read (they are its thread's).
        let finished = runners.filter { $0.finished.load(ordering: .acquiring) }
        for r in finished {
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
        s.unclaimedPortAccesses = finished.reduce(0) { $0 + $1.unclaimedPortAccesses }
        s.unclaimedMMIOAccesses = finished.reduce(0) { $0 + $1.unclaimedMMIOAccesses }
        return s
    }
}
