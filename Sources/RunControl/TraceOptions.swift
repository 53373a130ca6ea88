/// What `--trace` turns on. Checked with one branch on the hot paths; all off by default.
public struct TraceOptions: OptionSet, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Every vCPU exit, with its reason.
    public static let exits = TraceOptions(rawValue: 1 << 0)
    /// Every port and MMIO access, with the device that served it (or none).
    public static let io = TraceOptions(rawValue: 1 << 1)
    /// Every hypercall: number, name, arguments, result, duration.
    public static let hypercalls = TraceOptions(rawValue: 1 << 2)
    /// Guest errors the VMM absorbed: unknown ports, writes to read-only memory, bad buffers.
    public static let guestErrors = TraceOptions(rawValue: 1 << 3)

    public static let names: [(String, TraceOptions)] = [
        ("exits", .exits), ("io", .io), ("hypercalls", .hypercalls), ("guest-errors", .guestErrors),
    ]

    /// Parse "exits,hypercalls" or "all".
    public init?(parsing text: String) {
        var set: TraceOptions = []
        for word in text.split(separator: ",") {
            if word == "all" { set.formUnion([.exits, .io, .hypercalls, .guestErrors]); continue }
            guard let (_, option) = Self.names.first(where: { $0.0 == word }) else { return nil }
            set.insert(option)
        }
        self = set
    }
}
