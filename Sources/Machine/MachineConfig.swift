import Boot
import Lifecycle
import Memory

/// Everything needed to build and run one VM: what the command line describes.
public struct MachineConfig: Sendable {
    public var memory: MemorySize
    public var kernelPath: String
    public var commandLine: String
    public var cpus: Int = 1
    public var trace: TraceOptions = []
    public var verbose = false
    /// Feed stdin to the serial port (off for tests that run many VMs in one process).
    public var consoleInput = true
    /// Linux boot: the initrd, the entry path, `console=ttyS0` added when no console is named,
    /// and the CPUID adjustments for PVM hosts (see docs/boot.md).
    public var initrdPath: String? = nil
    public var entry: EntryChoice = .auto
    public var addSerialConsole = true
    public var pvmHost = false

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

    public var description: String {
        switch self {
        case .kvm(let m, _), .memory(let m), .boot(let m, _), .setup(let m): return m
        }
    }

    public var exitCode: Int32 {
        switch self {
        case .kvm(_, let code), .boot(_, let code): return code
        case .memory: return ExitStatus.usage
        case .setup: return ExitStatus.vmmError
        }
    }
}
