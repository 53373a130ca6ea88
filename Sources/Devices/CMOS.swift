import Glibc
import Synchronization

/// The CMOS RAM and real-time clock (MC146818) at ports 0x70 (index; bit 7 masks NMIs) and
/// 0x71 (data). Linux reads the wall-clock time from it at boot. The clock registers are the
/// host's current UTC time in BCD, 24-hour mode, read afresh on every access so the guest sees
/// the seconds tick; the update-in-progress bit is never set, so a reader never waits. The
/// other bytes are plain RAM that reads back what was written (zero at start).
public final class CMOS: BusDevice, @unchecked Sendable {
    public static let port: UInt64 = 0x70
    public static let portCount: UInt64 = 2

    struct State {
        var index: UInt8 = 0
        var ram = [UInt8](repeating: 0, count: 128)
    }
    private let state = Mutex(State())
    /// Where the time comes from (seconds since the epoch); tests pin it.
    private let clock: @Sendable () -> Int

    public init(clock: @escaping @Sendable () -> Int = { Int(time(nil)) }) {
        self.clock = clock
        super.init(name: "cmos-rtc")
    }

    public override func read(offset: UInt64, size: Int) -> UInt64 {
        state.withLock { s in
            if offset == 0 { return UInt64(s.index) }
            let i = Int(s.index & 0x7F)
            return UInt64(Self.clockRegister(i, time: clock()) ?? s.ram[i])
        }
    }

    public override func write(offset: UInt64, size: Int, value: UInt64) {
        state.withLock { s in
            let v = UInt8(truncatingIfNeeded: value)
            if offset == 0 {
                s.index = v
            } else {
                let i = Int(s.index & 0x7F)
                if Self.clockRegister(i, time: 0) == nil { s.ram[i] = v }   // the clock itself is read-only here
            }
        }
    }

    static func bcd(_ v: Int32) -> UInt8 { UInt8((v / 10) << 4 | (v % 10)) }

    /// The clock and status registers, or nil for plain CMOS RAM.
    static func clockRegister(_ index: Int, time seconds: Int) -> UInt8? {
        switch index {
        case 0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32:
            var t = time_t(seconds)
            var tm = Glibc.tm()
            gmtime_r(&t, &tm)
            switch index {
            case 0x00: return bcd(tm.tm_sec)
            case 0x02: return bcd(tm.tm_min)
            case 0x04: return bcd(tm.tm_hour)
            case 0x06: return bcd(tm.tm_wday + 1)
            case 0x07: return bcd(tm.tm_mday)
            case 0x08: return bcd(tm.tm_mon + 1)
            case 0x09: return bcd((tm.tm_year + 1900) % 100)
            default: return bcd((tm.tm_year + 1900) / 100)
            }
        case 0x0A: return 0x26   // 32.768 kHz time base, 1024 Hz rate, no update in progress
        case 0x0B: return 0x02   // 24-hour mode, BCD, no interrupts
        case 0x0C: return 0x00   // no interrupt flags
        case 0x0D: return 0x80   // valid RAM and time (battery good)
        default: return nil
        }
    }
}
