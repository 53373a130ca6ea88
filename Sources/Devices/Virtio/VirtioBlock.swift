import Backends
import Glibc
import HostSupport
import RunControl
import Synchronization

/// virtio-blk (virtio 1.2, 5.2) on a block backend (a raw image file): one request queue,
/// 512-byte sectors.
///
/// A request is a 16-byte header (type, reserved, sector) in device-readable buffers, data,
/// and a one-byte status as the last device-writable byte. Reads and writes go straight
/// between the backend and guest RAM (on the checked host pointers). FLUSH is the backend's
/// flush; DISCARD and WRITE_ZEROES punch holes when the backend can.
public final class VirtioBlock: VirtioDeviceModel {
    public static let sectorSize: UInt64 = 512
    // Feature bits.
    public static let featureSizeMax: UInt64 = 1 << 1, featureSegMax: UInt64 = 1 << 2
    public static let featureReadOnly: UInt64 = 1 << 5, featureBlockSize: UInt64 = 1 << 6
    public static let featureFlush: UInt64 = 1 << 9, featureDiscard: UInt64 = 1 << 13
    public static let featureWriteZeroes: UInt64 = 1 << 14
    // Request types and status values.
    public static let typeIn: UInt32 = 0, typeOut: UInt32 = 1, typeFlush: UInt32 = 4, typeGetID: UInt32 = 8
    public static let typeDiscard: UInt32 = 11, typeWriteZeroes: UInt32 = 13
    public static let statusOK: UInt8 = 0, statusIOError: UInt8 = 1, statusUnsupported: UInt8 = 2
    /// Limits announced in the configuration: segments per request, bytes per segment, and
    /// sectors / ranges per DISCARD or WRITE_ZEROES.
    public static let segMax: UInt32 = 126
    public static let sizeMax: UInt32 = 1 << 20
    public static let maxDiscardSectors: UInt32 = 1 << 22, maxDiscardSegments: UInt32 = 16
    public static let idLength = 20

    public let backend: any BlockBackend
    public let capacitySectors: UInt64
    public let serial: [UInt8]
    public let counters: VirtioCounters
    public let deviceFeatures: UInt64
    let configBytes: [UInt8]
    public var deviceType: UInt16 { 2 }
    public var queueCount: Int { 1 }
    public var queueMaxSize: UInt16 { 256 }
    public var readOnly: Bool { backend.isReadOnly }
    public var path: String { backend.path }
    public var canDiscard: Bool { backend.canDiscard }
    /// Failed backend operations, for the report.
    public let ioErrors = Atomic<UInt64>(0)
    /// A flush failed: what it should have made durable may be lost, and saying OK to a later
    /// flush or write would say it was not (fsync's errors are reported once, then forgotten,
    /// by Linux). So from then on every write and flush of this disk fails, for the rest of
    /// the run, as QEMU does.
    public let flushFailed = Atomic<Bool>(false)

    /// The disk `index` (vda = 0, which also seeds its serial) on `backend`.
    public init(backend: any BlockBackend, index: Int, trace: TraceOptions) {
        self.backend = backend
        capacitySectors = backend.size / Self.sectorSize
        let name = "vd" + String(UnicodeScalar(UInt8(97 + index % 26)))
        serial = Array("swiftvmm-\(name)".utf8.prefix(Self.idLength))
        var features = Self.featureSizeMax | Self.featureSegMax | Self.featureBlockSize | Self.featureFlush
        if backend.isReadOnly { features |= Self.featureReadOnly }
        if backend.canDiscard { features |= Self.featureDiscard | Self.featureWriteZeroes }
        deviceFeatures = features
        configBytes = Self.configuration(capacitySectors: capacitySectors, discard: backend.canDiscard)
        counters = VirtioCounters(name: "virtio-blk \(name)", trace: trace)
    }

    /// The disk `index` on the image file at `path`.
    public convenience init(path: String, readOnly: Bool, index: Int, trace: TraceOptions) throws(FileBlockBackend.OpenError) {
        self.init(backend: try FileBlockBackend(path: path, readOnly: readOnly), index: index, trace: trace)
    }

    // MARK: Configuration (struct virtio_blk_config)

    public var configSize: Int { configBytes.count }
    public func readConfig(offset: Int, size: Int) -> UInt64 { Virtio.littleEndian(configBytes, offset: offset, size: size) }

    /// The configuration never changes, so it is laid out once.
    static func configuration(capacitySectors: UInt64, discard: Bool) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 60)
        func put(_ off: Int, _ v: UInt64, _ width: Int) {
            for i in 0..<width { bytes[off + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
        }
        put(0, capacitySectors, 8)
        put(8, UInt64(sizeMax), 4)
        put(12, UInt64(segMax), 4)
        put(20, sectorSize, 4)                              // blk_size
        if discard {
            put(36, UInt64(maxDiscardSectors), 4)
            put(40, UInt64(maxDiscardSegments), 4)
            put(44, 1, 4)                                   // discard_sector_alignment
            put(48, UInt64(maxDiscardSectors), 4)
            put(52, UInt64(maxDiscardSegments), 4)
            put(56, 1, 1)                                   // write_zeroes_may_unmap
        }
        return bytes
    }

    // MARK: Requests

    public func serve(_ index: Int, _ queues: inout VirtioQueues) -> Bool {
        // A driver that did not accept FLUSH treats the disk as write-through (Linux's
        // virtio_blk then never sends a flush), so every completed write must already be on
        // stable storage: flush before reporting it.
        let writeThrough = queues.features & Self.featureFlush == 0
        return drain(index, &queues) { (chain) throws(VirtqueueError) in try serve(&chain, writeThrough: writeThrough) }
    }

    /// Serve one request; returns the bytes written into the chain (data + status). Throws
    /// when there is no writable status byte to report anything in.
    public func serve(_ chain: inout DescriptorChain, writeThrough: Bool) throws(VirtqueueError) -> UInt32 {
        // The status byte is the last device-writable byte.
        let writable = chain.writableLength
        guard writable >= 1 else { throw .unanswerable(head: chain.head, "no device-writable status byte") }
        let dataIn = writable - 1
        var status = Self.statusOK
        var written: UInt64 = 0
        if let fault = chain.fault {
            counters.guestError("request \(chain.head): \(fault)")
            status = Self.statusIOError
        } else {
            var header = (UInt64(0), UInt64(0))
            let haveHeader = withUnsafeMutableBytes(of: &header) { chain.gather(from: 0, into: $0.baseAddress!, count: 16) }
            if !haveHeader {
                counters.guestError("request \(chain.head): header shorter than 16 bytes")
                status = Self.statusIOError
            } else {
                let type = UInt32(truncatingIfNeeded: UInt64(littleEndian: header.0))
                let sector = UInt64(littleEndian: header.1)
                (status, written) = perform(type: type, sector: sector, chain: chain, dataIn: dataIn, writeThrough: writeThrough)
            }
        }
        guard chain.scatter(from: [status], count: 1, at: dataIn) else {
            throw .unanswerable(head: chain.head, "status byte is not in writable guest RAM")
        }
        return UInt32(truncatingIfNeeded: written + 1)
    }

    private func perform(type: UInt32, sector: UInt64, chain: DescriptorChain, dataIn: UInt64, writeThrough: Bool) -> (UInt8, UInt64) {
        let dataOut = chain.readableLength - 16
        switch type {
        case Self.typeIn:
            // Data for a read must be device-writable: readable bytes after the header mean
            // the driver posted the buffer the wrong way round.
            guard dataOut == 0 else {
                counters.guestError("read request \(chain.head) has \(dataOut) device-readable data bytes")
                return (Self.statusIOError, 0)
            }
            guard let offset = checkRange(sector: sector, bytes: dataIn, what: "read") else { return (Self.statusIOError, 0) }
            var pos = offset
            let ok = chain.forEachPiece(writable: true, from: 0, count: dataIn) { p, n in
                defer { pos += UInt64(n) }
                return io { () throws(BlockIOError) in try backend.read(into: p, count: n, at: pos) }
            }
            if !ok { return (Self.statusIOError, 0) }
            return (Self.statusOK, dataIn)
        case Self.typeOut:
            if flushFailed.load(ordering: .acquiring) { return (Self.statusIOError, 0) }
            if readOnly {
                counters.guestError("write to read-only \(name) at sector \(sector)")
                return (Self.statusIOError, 0)
            }
            guard dataIn == 0 else {
                counters.guestError("write request \(chain.head) has \(dataIn) device-writable data bytes")
                return (Self.statusIOError, 0)
            }
            guard let offset = checkRange(sector: sector, bytes: dataOut, what: "write") else { return (Self.statusIOError, 0) }
            var pos = offset
            var ok = chain.forEachPiece(writable: false, from: 16, count: dataOut) { p, n in
                defer { pos += UInt64(n) }
                return io { () throws(BlockIOError) in try backend.write(from: p, count: n, at: pos) }
            }
            if ok && writeThrough { ok = flush() }
            return (ok ? Self.statusOK : Self.statusIOError, 0)
        case Self.typeFlush:
            if readOnly { return (Self.statusOK, 0) }
            return (flush() ? Self.statusOK : Self.statusIOError, 0)
        case Self.typeGetID:
            let n = Int(min(dataIn, UInt64(Self.idLength)))
            var id = serial + [UInt8](repeating: 0, count: Self.idLength - serial.count)
            let ok = id.withUnsafeMutableBytes { chain.scatter(from: $0.baseAddress!, count: n, at: 0) }
            return (ok ? Self.statusOK : Self.statusIOError, UInt64(n))
        case Self.typeDiscard, Self.typeWriteZeroes:
            guard canDiscard else { return (Self.statusUnsupported, 0) }
            return (discard(chain: chain, bytes: dataOut, zeroes: type == Self.typeWriteZeroes), 0)
        default:
            return (Self.statusUnsupported, 0)
        }
    }

    /// The byte offset of `sector` if [sector, sector + bytes) is whole sectors inside the disk.
    private func checkRange(sector: UInt64, bytes: UInt64, what: String) -> UInt64? {
        let sectors = bytes / Self.sectorSize
        guard bytes % Self.sectorSize == 0, sector <= capacitySectors, sectors <= capacitySectors - sector else {
            counters.guestError("\(what) of \(bytes) bytes at sector \(sector) is outside \(name) (\(capacitySectors) sectors) or not whole sectors")
            return nil
        }
        return sector * Self.sectorSize
    }

    /// DISCARD / WRITE_ZEROES: an array of 16-byte ranges (sector, num_sectors, flags).
    private func discard(chain: DescriptorChain, bytes: UInt64, zeroes: Bool) -> UInt8 {
        guard bytes % 16 == 0, bytes > 0, bytes / 16 <= UInt64(Self.maxDiscardSegments) else {
            counters.guestError("discard payload of \(bytes) bytes is malformed")
            return Self.statusIOError
        }
        for i in 0..<(bytes / 16) {
            var range = (UInt64(0), UInt32(0), UInt32(0))
            guard withUnsafeMutableBytes(of: &range, { chain.gather(from: 16 + 16 * i, into: $0.baseAddress!, count: 16) }) else {
                return Self.statusIOError
            }
            let sector = UInt64(littleEndian: range.0), count = UInt64(UInt32(littleEndian: range.1))
            let flags = UInt32(littleEndian: range.2)
            guard flags & ~1 == 0, count <= UInt64(Self.maxDiscardSectors),
                  let offset = checkRange(sector: sector, bytes: count * Self.sectorSize, what: zeroes ? "write-zeroes" : "discard") else {
                return Self.statusIOError
            }
            // A discarded range reads back as zeroes, so it serves both requests.
            if !io({ () throws(BlockIOError) in try backend.discard(at: offset, count: count * Self.sectorSize) }) {
                return Self.statusIOError
            }
        }
        return Self.statusOK
    }

    /// The backend's flush, unless one already failed; a failure sticks (see `flushFailed`) and
    /// is said once.
    private func flush() -> Bool {
        if flushFailed.load(ordering: .acquiring) { return false }
        var failure: BlockIOError?
        do throws(BlockIOError) { try backend.flush() } catch { failure = error }
        guard let failure else { return true }
        ioErrors.wrappingAdd(1, ordering: .relaxed)
        flushFailed.store(true, ordering: .releasing)
        Diagnostics.line("swiftvmm: \(counters.name): flushing \(backend.path) failed (\(failure)): what it held may be lost, so every later write and flush of this disk fails")
        return false
    }

    /// Run one backend operation; a failure is counted (and traced) and becomes the
    /// request's IOERR status.
    private func io(_ operation: () throws(BlockIOError) -> Void) -> Bool {
        do throws(BlockIOError) {
            try operation()
            return true
        } catch {
            ioErrors.wrappingAdd(1, ordering: .relaxed)
            if counters.trace.contains(.guestErrors) { Diagnostics.line("swiftvmm: \(counters.name): \(backend.path): \(error)") }
            return false
        }
    }
}
