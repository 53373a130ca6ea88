import RunControl

/// The boot-time marker, as Firecracker has it: a guest (typically its init) writes the byte
/// 123 to port 0x3F0 when it considers itself booted, and the time is reported. Other values
/// are ignored.
public final class BootMarker: BusDevice, @unchecked Sendable {
    public static let port: UInt64 = 0x3F0
    public static let value: UInt64 = 123
    private let timeline: Timeline

    public init(timeline: Timeline) {
        self.timeline = timeline
        super.init(name: "boot-marker")
    }

    public override func write(offset: UInt64, size: Int, value: UInt64) {
        if offset == 0 && value & 0xFF == Self.value { timeline.markBootComplete() }
    }
}
