import RunControl

/// QEMU's isa-debug-exit, so test kernels written for QEMU run unchanged: a write of V to the
/// port ends the run with exit code `(V << 1) | 1` (`--debug-exit[=PORT]`, default 0xF4,
/// 4 bytes wide). Reads return all-ones, as an absent device would.
public final class DebugExit: BusDevice, @unchecked Sendable {
    public static let defaultPort: UInt64 = 0xF4
    public static let width: UInt64 = 4
    private let stop: StopController

    public init(stop: StopController) {
        self.stop = stop
        super.init(name: "debug-exit")
    }

    public override func write(offset: UInt64, size: Int, value: UInt64) {
        stop.stop(.debugExit(value: UInt32(truncatingIfNeeded: value)))
    }
}
