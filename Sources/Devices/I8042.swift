import RunControl
import Synchronization

/// The PC keyboard controller (i8042), reduced to what a kernel needs from it on a machine
/// with no keyboard: a status register that says "idle", a command byte it can read and
/// write back, its self-tests answering "passed", and the reset line. Writing 0xFE to the
/// command port pulses the CPU's reset, which is how Linux reboots with `reboot=k` (and
/// among the first things it tries otherwise): swiftvmm ends the run as a reboot (exit 0)
/// rather than restart the guest.
///
/// Ports: 0x60 data (read: output buffer; write: argument of the last command),
///        0x64 status (read) / command (write).
public final class I8042: BusDevice, @unchecked Sendable {
    public static let dataPort: UInt64 = 0x60
    public static let commandPort: UInt64 = 0x64
    /// Registered for 0x60-0x64 as one range. Port 0x61 inside it is the PIT's speaker
    /// port, which KVM's in-kernel PIT serves before an exit ever reaches swiftvmm.
    public static let portCount: UInt64 = 5
    public static let resetCommand: UInt8 = 0xFE

    static let statusOutputFull: UInt8 = 0x01
    static let statusSystemFlag: UInt8 = 0x04   // set after a successful self-test, as firmware leaves it
    static let statusUnlocked: UInt8 = 0x10     // the keyboard is not inhibited (Linux warns "Keylock active" otherwise)

    struct State {
        var output: UInt8? = nil
        var commandByte: UInt8 = 0x61      // translate, system flag, keyboard interrupt on
        var pendingCommand: UInt8? = nil    // a command waiting for its data byte
    }
    private let state = Mutex(State())
    private let stop: StopController

    public init(stop: StopController) {
        self.stop = stop
        super.init(name: "i8042")
    }

    /// `offset` is from 0x60: 0 data, 4 command/status.
    public override func read(offset: UInt64, size: Int) -> UInt64 {
        state.withLock { s in
            switch offset {
            case 0:
                let v = s.output ?? 0
                s.output = nil
                return UInt64(v)
            case 4:
                return UInt64(Self.statusSystemFlag | Self.statusUnlocked | (s.output == nil ? 0 : Self.statusOutputFull))
            default:
                return 0xFF
            }
        }
    }

    public override func write(offset: UInt64, size: Int, value: UInt64) {
        let byte = UInt8(truncatingIfNeeded: value)
        let reset: Bool = state.withLock { s in
            switch offset {
            case 0:
                if s.pendingCommand == 0x60 { s.commandByte = byte }
                s.pendingCommand = nil
                return false
            case 4:
                switch byte {
                case 0x20: s.output = s.commandByte          // read command byte
                case 0x60, 0xD1, 0xD2, 0xD3, 0xD4: s.pendingCommand = byte  // next data byte is the argument
                case 0xAA: s.output = 0x55                   // controller self-test: passed
                case 0xA9, 0xAB: s.output = 0x00             // port tests: no error
                case Self.resetCommand: return true
                default: break                               // enable/disable ports: nothing to do
                }
                return false
            default:
                return false
            }
        }
        if reset { stop.stop(.reboot) }
    }
}
