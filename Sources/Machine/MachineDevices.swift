import Backends
import Devices
import HostSupport
import KVM
import Memory
import RunControl
import Synchronization
import X86Platform

/// The virtio devices the command line asks for (`--block`, `--tunnet`, `--rng`, `--virtiofs`).
public struct VirtioConfig: Sendable {
    public struct Block: Sendable, Equatable {
        public var path: String
        public var readOnly: Bool
        public init(path: String, readOnly: Bool) { self.path = path; self.readOnly = readOnly }
    }
    public struct Network: Sendable, Equatable {
        public var tap: String
        /// nil: generated from the tap's name (locally administered, stable per name).
        public var mac: [UInt8]?
        public init(tap: String, mac: [UInt8]?) { self.tap = tap; self.mac = mac }
    }
    /// A host directory shared with virtio-fs: the guest mounts it by `tag`.
    public struct FileSystem: Sendable, Equatable {
        public var path: String
        public var tag: String
        public var readOnly: Bool
        public init(path: String, tag: String, readOnly: Bool) { self.path = path; self.tag = tag; self.readOnly = readOnly }
    }
    public var blocks: [Block] = []
    public var network: Network?
    public var rng = false
    public var filesystems: [FileSystem] = []
    /// A virtio-console with these ports (port 0 is the console, hvc0), or none.
    public var consolePorts: [VirtioConsole.Port]?
    /// The virtiofsd to start for `filesystems` (nil: found as `Virtiofsd.locate` says).
    public var virtiofsdPath: String?
    public init() {}
}

/// The PCI bus and the virtio devices on it, with their device threads.
///
/// PCI slot order is the order of the options' kinds: block devices first (vda, vdb, … in
/// command-line order), then the network device, then the entropy device, then the shared
/// directories (each with its virtiofsd, started here and ended with the run), then the
/// virtio-console (`swiftvmm exec`'s).
final class MachineDevices: Sendable {
    /// INTx lines for PCI functions (used only while a guest has MSI-X off): ISA IRQs that
    /// no legacy device of this machine uses, shared round-robin.
    static let intxGSIs: [UInt32] = [10, 11, 5, 9]

    let pci = PCIBus(window: BootLayout.pciHole)
    let transports: [VirtioPCI]
    /// Each device's slot and the GSI its INTA# raises, for the DSDT's _PRT.
    let pciInterrupts: [ACPITables.PCIInterrupt]
    private let threads = Mutex<[HostThread]>([])

    private let stopFD: Int32

    init(config: VirtioConfig, interrupts kvm: KVMInterrupts, memory: GuestMemory, ports: IOBus, mmio: IOBus,
         stop: StopController, trace: TraceOptions) throws(MachineError) {
        stopFD = stop.pollFD
        do {
            try ports.register(pci.configPorts, at: PCIBus.configAddressPort, length: PCIBus.configPortCount)
            try mmio.register(pci.window, at: pci.mmioWindow.lowerBound, length: UInt64(pci.mmioWindow.count))
        } catch {
            throw .setup(error.description)
        }
        var models: [any VirtioDeviceModel] = []
        for (i, block) in config.blocks.enumerated() {
            do {
                models.append(try VirtioBlock(path: block.path, readOnly: block.readOnly, index: i, trace: trace))
            } catch {
                throw .device(error.description, exitCode: ExitStatus.unreadableFile)
            }
        }
        if let net = config.network {
            do {
                models.append(try VirtioNet(tapName: net.tap, mac: net.mac, trace: trace))
            } catch {
                // A name no tap can have is the user's mistake; a tap that cannot be opened is not.
                if case .badName = error { throw .usage(error.description) }
                throw .device(error.description, exitCode: ExitStatus.vmmError)
            }
        }
        if config.rng { models.append(VirtioRNG(trace: trace)) }
        if !config.filesystems.isEmpty {
            models += try Self.fileSystems(config, memory: memory, stop: stop, trace: trace)
        }
        if let ports = config.consolePorts {
            do {
                models.append(try VirtioConsole(ports: ports, trace: trace))
            } catch {
                throw .setup("virtio-console: \(error)")
            }
        }

        var transports: [VirtioPCI] = []
        var pciInterrupts: [ACPITables.PCIInterrupt] = []
        let intx = SharedLines(sink: kvm)
        for (i, model) in models.enumerated() {
            do {
                let gsi = Self.intxGSIs[i % Self.intxGSIs.count]
                let transport = try VirtioPCI(device: model, memory: memory, interrupts: kvm, intx: intx,
                                              intxLine: gsi, doorbells: kvm)
                let slot = try pci.add(transport)
                transports.append(transport)
                pciInterrupts.append(ACPITables.PCIInterrupt(slot: slot, gsi: gsi))
            } catch {
                throw .setup("\(model.name): \(error)")
            }
        }
        self.transports = transports
        self.pciInterrupts = pciInterrupts
    }

    /// One virtio-fs device per shared directory, each served by a virtiofsd of its own. A
    /// virtiofsd that goes away mid-run ends the run (exit 70): the guest has lost files it
    /// was using, and waiting for it to notice would only turn that into a hang.
    private static func fileSystems(_ config: VirtioConfig, memory: GuestMemory, stop: StopController,
                                    trace: TraceOptions) throws(MachineError) -> [any VirtioDeviceModel] {
        let binary: (String, Virtiofsd.Flavor)
        do {
            binary = try Virtiofsd.locate(explicit: config.virtiofsdPath)
        } catch {
            throw .device(error.description, exitCode: ExitStatus.kvmUnavailable)
        }
        var models: [any VirtioDeviceModel] = []
        for fs in config.filesystems {
            let process: Virtiofsd
            do {
                process = try Virtiofsd(path: binary.0, flavor: binary.1, sharing: fs.path, readOnly: fs.readOnly)
            } catch {
                if case .sharedDirectory = error { throw .device(error.description, exitCode: ExitStatus.unreadableFile) }
                throw .device(error.description, exitCode: ExitStatus.vmmError)
            }
            let frontend = VhostUserFrontend(socket: process.socket, name: "virtiofsd for \(fs.path)")
            do {
                models.append(try VirtioFS(tag: fs.tag, frontend: frontend, backend: process, memory: memory, trace: trace) {
                    [stop] message in stop.stop(.vmmError(message))
                })
            } catch {
                if case .badTag = error { throw .usage(error.description) }
                throw .device(error.description, exitCode: ExitStatus.vmmError)
            }
        }
        return models
    }

    /// Start one thread per device; they end when the run stops.
    func start() {
        let started = transports.map { $0.start(stopFD: stopFD) }
        threads.withLock { $0 = started }
    }

    /// Join the device threads that end before `deadline`; the names of those that did not.
    func join(until deadline: UInt64) -> [String] {
        let started = threads.withLock { t in defer { t = [] }; return t }
        let stuck = zip(transports, started).filter { !$0.1.join(until: deadline) }.map { $0.0.name }
        // The device threads no longer watch the back-ends: end them before their connections
        // close (virtiofsd would complain on stderr, which may be a command's).
        for t in transports { (t.device as? VirtioFS)?.backend?.terminate(within: 1) }
        return stuck
    }

    /// The virtio-console, if there is one, and its transport.
    var console: (device: VirtioConsole, transport: VirtioPCI)? {
        for t in transports { if let c = t.device as? VirtioConsole { return (c, t) } }
        return nil
    }

    /// After the device threads have ended: what the guest left in the console's transmit
    /// rings is served, and its outputs are written out, until `deadline`.
    func finishConsole(until deadline: UInt64) {
        guard let (device, transport) = console else { return }
        let seconds = Double(deadline &- min(deadline, monotonicNanoseconds())) / 1e9
        if !device.finish(transport, waitingUpTo: max(0.05, seconds)) {
            Diagnostics.line("swiftvmm: virtio-console: output nobody read was left unwritten")
        }
    }

    var guestErrors: UInt64 {
        transports.reduce(0) { $0 + $1.device.counters.guestErrors.load(ordering: .relaxed) }
    }

    /// One line per device for `--verbose`.
    var report: [String] {
        transports.map { t in
            let d = t.device
            let status = t.status
            let driver = status & Virtio.statusDriverOK != 0
                ? "at exit driver ok (features 0x\(String(t.negotiatedFeatures, radix: 16)))" : "at exit reset"
            var line = "\(d.name): \(driver)\(status & Virtio.statusNeedsReset != 0 ? " (needs reset)" : ""), "
                + "\(d.counters.requests.load(ordering: .relaxed)) requests, "
                + "\(t.interrupts.raised.load(ordering: .relaxed)) interrupts (\(t.interrupts.messagesSent.load(ordering: .relaxed)) MSI-X, "
                + "\(t.interrupts.intxAssertions.load(ordering: .relaxed)) INTx), \(d.counters.guestErrors.load(ordering: .relaxed)) guest errors"
            let refused = t.doorbellFailures.load(ordering: .relaxed)
            if refused > 0 { line += ", BAR 0 moved onto a taken address \(refused) times" }
            if let blk = d as? VirtioBlock {
                line += ", \(blk.ioErrors.load(ordering: .relaxed)) I/O errors"
                if blk.flushFailed.load(ordering: .relaxed) { line += " (a flush failed: writes refused since)" }
            }
            if let net = d as? VirtioNet {
                line += ", frames \(net.framesReceived.load(ordering: .relaxed)) in / \(net.framesSent.load(ordering: .relaxed)) out / \(net.framesDropped.load(ordering: .relaxed)) dropped"
            }
            return line
        }
    }
}
