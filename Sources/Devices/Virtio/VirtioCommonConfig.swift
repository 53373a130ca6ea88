/// struct virtio_pci_common_cfg (virtio 1.2, 4.1.4.3): the registers through which a driver
/// negotiates features, sets up queues and moves the device status along. Plain state with no
/// threads or locks in sight: a write returns what the transport must do about it (start the
/// device, reset it, activate a queue), so the whole protocol is testable on its own.
public struct VirtioCommonConfig: Sendable, Equatable {
    public static let noVector: UInt16 = 0xFFFF

    public struct Queue: Sendable, Equatable {
        public var size: UInt16
        public var vector: UInt16 = VirtioCommonConfig.noVector
        public var enabled = false
        public var descriptors: UInt64 = 0
        public var driverArea: UInt64 = 0
        public var deviceArea: UInt64 = 0
        public init(size: UInt16) { self.size = size }
    }

    /// What a write asks of the transport.
    public enum Effect: Equatable, Sendable {
        case none
        /// Status 0: everything back to the initial state.
        case reset
        /// DRIVER_OK with accepted features: start serving.
        case start(features: UInt64)
        /// queue_enable: check the rings and start using them.
        case enableQueue(Int, Queue, eventIndex: Bool)
    }

    public let offeredFeatures: UInt64
    public let queueMaxSize: UInt16
    /// Entries in the function's MSI-X table: a queue per vector, and one for configuration.
    public var msixVectors: Int { queues.count + 1 }
    public private(set) var deviceFeatureSelect: UInt32 = 0
    public private(set) var driverFeatureSelect: UInt32 = 0
    public private(set) var driverFeatures: UInt64 = 0
    public private(set) var configVector: UInt16 = VirtioCommonConfig.noVector
    public private(set) var status: UInt8 = 0
    public private(set) var configGeneration: UInt8 = 0
    public private(set) var queueSelect: UInt16 = 0
    public private(set) var queues: [Queue]

    public init(offeredFeatures: UInt64, queueCount: Int, queueMaxSize: UInt16) {
        self.offeredFeatures = offeredFeatures
        self.queueMaxSize = queueMaxSize
        queues = Array(repeating: Queue(size: queueMaxSize), count: queueCount)
    }

    /// Back to the state after power-on (status 0).
    public mutating func reset() {
        self = VirtioCommonConfig(offeredFeatures: offeredFeatures, queueCount: queues.count, queueMaxSize: queueMaxSize)
    }

    /// The device can no longer go on (a broken ring): DEVICE_NEEDS_RESET (virtio 1.2, 2.1.2).
    public mutating func setNeedsReset() { status |= Virtio.statusNeedsReset }

    /// The driver has started the device and it does not need a reset.
    public var isRunning: Bool { status & Virtio.statusDriverOK != 0 && status & Virtio.statusNeedsReset == 0 }

    /// The MSI-X vector the driver chose for queue `index` (NO_VECTOR for none).
    public func vector(forQueue index: Int) -> UInt16 { index < queues.count ? queues[index].vector : Self.noVector }

    // MARK: Guest accesses

    /// Field offsets and widths of struct virtio_pci_common_cfg.
    static let fields: [(offset: Int, width: Int)] = [
        (0, 4), (4, 4), (8, 4), (12, 4), (16, 2), (18, 2), (20, 1), (21, 1),
        (22, 2), (24, 2), (26, 2), (28, 2), (30, 2), (32, 8), (40, 8), (48, 8), (56, 2), (58, 2),
    ]

    static func field(containing offset: Int) -> (offset: Int, width: Int)? {
        fields.first { offset >= $0.offset && offset < $0.offset + $0.width }
    }

    /// A read of any width: the bytes are assembled from the fields they fall in.
    public func read(offset: Int, size: Int) -> UInt64 {
        var value: UInt64 = 0
        var i = 0
        while i < size {
            guard let f = Self.field(containing: offset + i) else { i += 1; continue }
            let whole = field(f.offset)
            let shift = UInt64(offset + i - f.offset) * 8
            let take = min(f.width - (offset + i - f.offset), size - i)
            let mask: UInt64 = take >= 8 ? ~0 : (1 << UInt64(take * 8)) - 1
            value |= ((whole >> shift) & mask) << UInt64(i * 8)
            i += take
        }
        return value
    }

    private func field(_ offset: Int) -> UInt64 {
        let q = Int(queueSelect)
        let hasQueue = q < queues.count
        switch offset {
        case 0: return UInt64(deviceFeatureSelect)
        case 4: return deviceFeatureSelect < 2 ? (offeredFeatures >> (32 * UInt64(deviceFeatureSelect))) & 0xFFFF_FFFF : 0
        case 8: return UInt64(driverFeatureSelect)
        case 12: return driverFeatureSelect < 2 ? (driverFeatures >> (32 * UInt64(driverFeatureSelect))) & 0xFFFF_FFFF : 0
        case 16: return UInt64(configVector)
        case 18: return UInt64(queues.count)
        case 20: return UInt64(status)
        case 21: return UInt64(configGeneration)
        case 22: return UInt64(queueSelect)
        case 24: return hasQueue ? UInt64(queues[q].size) : 0             // 0: no such queue
        case 26: return hasQueue ? UInt64(queues[q].vector) : UInt64(Self.noVector)
        case 28: return hasQueue && queues[q].enabled ? 1 : 0
        case 30: return hasQueue ? UInt64(q) : 0                           // queue_notify_off
        case 32: return hasQueue ? queues[q].descriptors : 0
        case 40: return hasQueue ? queues[q].driverArea : 0
        case 48: return hasQueue ? queues[q].deviceArea : 0
        default: return 0                                                   // notify_data, queue_reset
        }
    }

    /// A vector number the driver chose: one the MSI-X table has, else NO_VECTOR, which is what
    /// the driver reads back when the device cannot map it (virtio 1.2, 4.1.4.3.2).
    static func vector(_ v: UInt64, of count: Int) -> UInt16 {
        v < UInt64(count) ? UInt16(v) : noVector
    }

    /// A write inside one field (narrower writes merge into it: drivers write 64-bit fields as
    /// halves). Returns what the transport must do, and the guest's mistake if it made one.
    public mutating func write(offset: Int, size: Int, value: UInt64) -> (effect: Effect, guestError: String?) {
        guard let f = Self.field(containing: offset), offset + size <= f.offset + f.width else { return (.none, nil) }
        let old = field(f.offset)
        let shift = UInt64(offset - f.offset) * 8
        let mask: UInt64 = size >= 8 ? ~0 : ((1 << UInt64(size * 8)) - 1) << shift
        let v = (old & ~mask) | ((value << shift) & mask)
        let q = Int(queueSelect)
        let hasQueue = q < queues.count
        // Queue fields may change only while the queue is disabled (virtio 1.2, 4.1.4.3.2).
        let queueWritable = hasQueue && !queues[q].enabled
        switch f.offset {
        case 0: deviceFeatureSelect = UInt32(truncatingIfNeeded: v)
        case 8: driverFeatureSelect = UInt32(truncatingIfNeeded: v)
        case 12:
            guard status & Virtio.statusFeaturesOK == 0, driverFeatureSelect < 2 else { break }
            let s = 32 * UInt64(driverFeatureSelect)
            driverFeatures = (driverFeatures & ~(0xFFFF_FFFF << s)) | ((v & 0xFFFF_FFFF) << s)
        case 16: configVector = Self.vector(v, of: msixVectors)
        case 20:
            let newStatus = UInt8(truncatingIfNeeded: v)
            if newStatus == 0 { reset(); return (.reset, nil) }
            return setStatus(newStatus)
        case 22: queueSelect = UInt16(truncatingIfNeeded: v)
        case 24 where queueWritable: queues[q].size = UInt16(truncatingIfNeeded: v)
        case 26 where hasQueue: queues[q].vector = Self.vector(v, of: msixVectors)
        case 28 where queueWritable && v & 1 == 1:
            queues[q].enabled = true
            return (.enableQueue(q, queues[q], eventIndex: driverFeatures & Virtio.featureEventIndex != 0), nil)
        case 32 where queueWritable: queues[q].descriptors = v
        case 40 where queueWritable: queues[q].driverArea = v
        case 48 where queueWritable: queues[q].deviceArea = v
        default: break
        }
        return (.none, nil)
    }

    /// A status write other than 0. FEATURES_OK sticks only if the driver accepted VERSION_1
    /// and nothing the device did not offer; DRIVER_OK starts the device.
    private mutating func setStatus(_ newStatus: UInt8) -> (effect: Effect, guestError: String?) {
        var error: String?
        var s = newStatus & ~Virtio.statusNeedsReset | (status & Virtio.statusNeedsReset)
        if s & Virtio.statusFeaturesOK != 0 && status & Virtio.statusFeaturesOK == 0 {
            let ok = driverFeatures & ~offeredFeatures == 0 && driverFeatures & Virtio.featureVersion1 != 0
            if !ok {
                s &= ~Virtio.statusFeaturesOK
                error = "driver features 0x\(String(driverFeatures, radix: 16)) refused (offered 0x\(String(offeredFeatures, radix: 16)))"
            }
        }
        var startNow = s & Virtio.statusDriverOK != 0 && status & Virtio.statusDriverOK == 0
        if startNow && s & Virtio.statusFeaturesOK == 0 {
            // DRIVER_OK without agreed features (virtio 1.2, 3.1.1): the device stays inert.
            error = "DRIVER_OK set without FEATURES_OK"
            startNow = false
        }
        status = s
        return (startNow ? .start(features: driverFeatures) : .none, error)
    }
}
