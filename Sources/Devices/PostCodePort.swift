import Synchronization

/// Port 0x80, the POST diagnostic port. Firmware writes progress codes there; Linux writes
/// to it as a short I/O delay (`io_delay=0x80`, the default) around slow legacy devices. It
/// only has to exist: writes are kept (the last one, for reports), reads return all-ones.
public final class PostCodePort: BusDevice, @unchecked Sendable {
    public static let port: UInt64 = 0x80
    public let lastCode = Atomic<UInt8>(0)

    public init() { super.init(name: "port 0x80") }

    public override func read(offset: UInt64, size: Int) -> UInt64 { ~0 }

    public override func write(offset: UInt64, size: Int, value: UInt64) {
        lastCode.store(UInt8(truncatingIfNeeded: value), ordering: .relaxed)
    }
}
