import KernelLoading
import Memory
import RunControl

/// Everything needed to build and run one VM: what the command line describes.
public struct MachineConfig: Sendable {
    public var memory: MemorySize
    public var kernelPath: String
    public var commandLine: String
    public var cpus: Int = 1
    /// xAPIC IDs are 8 bits: CPUs 0...253, the I/O APIC 254 (255 is broadcast).
    public static let maxCPUs = 254
    public var trace: TraceOptions = []
    public var verbose = false
    /// Feed stdin to the serial port (off for tests that run many VMs in one process).
    public var consoleInput = true
    /// Virtio devices on the PCI bus (see MachineDevices.swift).
    public var virtio = VirtioConfig()

    // What ends a run, and what is kept of it (the CI side).
    /// Stop the VM and exit 124 after this many seconds.
    public var timeout: Double?
    /// Console patterns that must all match, in order; the run ends (exit 0) when the last does.
    public var expect: [String] = []
    /// Console patterns that end the run as a failure (exit 73).
    public var failOn: [String] = []
    /// End the run (exit 72) when the console shows `Kernel panic - not syncing`.
    public var detectPanic = true
    /// Copy of the console.
    public var consoleLogPath: String?
    /// Keep the console off stdout.
    public var quiet = false
    /// Where the console goes when not quiet (stdout; `swiftvmm exec --verbose` uses stderr).
    public var consoleFD: Int32 = 1
    /// A QEMU-compatible isa-debug-exit device on this port.
    public var debugExitPort: UInt16?
    /// Symbols for crash reports when the kernel is not an ELF with a symbol table.
    public var systemMapPath: String?
    /// An ELF with DWARF for resolving oops frames to source lines (default: the kernel, if ELF).
    public var debugVmlinuxPath: String?
    /// When swiftvmm started (monotonic ns), so reported times include its own start-up.
    public var startTime: UInt64?
    /// Linux boot: the initrd, the entry path, `console=ttyS0` added when no console is named,
    /// and the CPUID adjustments for PVM hosts (see docs/boot.md).
    public var initrdPath: String? = nil
    /// An initrd made in memory (`swiftvmm exec`'s), when there is no `initrdPath`.
    public var initrdData: [UInt8]? = nil
    public var entry: EntryChoice = .auto
    public var addSerialConsole = true
    public var pvmHost = false
    /// Let KVM hand the general registers over in kvm_run (KVM_CAP_SYNC_REGS) where it can;
    /// false makes every hypercall use KVM_GET_REGS/KVM_SET_REGS, as on hosts without it.
    public var syncRegisters = true

    public init(memory: MemorySize, kernelPath: String, commandLine: String) {
        self.memory = memory
        self.kernelPath = kernelPath
        self.commandLine = commandLine
    }
}

/// Why a machine could not be built, with the exit code each cause maps to.
public enum MachineError: Error, CustomStringConvertible {
    case kvm(String, exitCode: Int32)
    case memory(String)
    case boot(String, exitCode: Int32)
    case setup(String)
    case usage(String)
    /// A device could not be set up from its option (e.g. a missing block image: 66).
    case device(String, exitCode: Int32)

    public var description: String {
        switch self {
        case .kvm(let m, _), .memory(let m), .boot(let m, _), .setup(let m), .usage(let m), .device(let m, _): return m
        }
    }

    public var exitCode: Int32 {
        switch self {
        case .kvm(_, let code), .boot(_, let code), .device(_, let code): return code
        case .memory, .usage: return ExitStatus.usage
        case .setup: return ExitStatus.vmmError
        }
    }
}
