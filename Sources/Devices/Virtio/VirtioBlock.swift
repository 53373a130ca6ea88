internal import CHost
import Glibc
import RunControl

/// virtio-blk (virtio 1.2, 5.2) on a raw image file: one request queue, 512-byte sectors.
///
/// A request is a 16-byte header (type, reserved, sector) in device-readable buffers, data,
/// and a one-byte status as the last device-writable byte. Reads and writes go straight
/// between the file and guest RAM (pread/pwrite on the checked host pointers). FLUSH is
/// fdatasync; DISCARD and WRITE_ZEROES punch holes when the file system can.
public final class VirtioBlock: VirtioDevice, @unchecked Sendable {
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

    public let path: String
    public let readOnly: Bool
    public let fd: Int32
    public let capacitySectors: UInt64
    public let serial: [UInt8]
    public let canPunchHoles: Bool

    public enum OpenError: Error, CustomStringConvertible {
        case unreadable(path: String, errno: Int32)
        case notAFile(path: String)
        public var description: String {
            switch self {
            case .unreadable(let p, let e): return "cannot open block image \(p): \(String(cString: strerror(e)))"
            case .notAFile(let p): return "block image \(p) is not a regular file or block device"
            }
        }
    }

    /// Open `path` (read-only with `readOnly`). `index` names it (vda = 0) and seeds the serial.
    public init(path: String, readOnly: Bool, index: Int, trace: TraceOptions) throws(OpenError) {
        let fd = open(path, (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC)
        guard fd >= 0 else { throw .unreadable(path: path, errno: errno) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG || (st.st_mode & S_IFMT) == S_IFBLK else {
            close(fd)
            throw .notAFile(path: path)
        }
        var bytes = UInt64(st.st_size)
        if (st.st_mode & S_IFMT) == S_IFBLK { bytes = UInt64(max(0, lseek(fd, 0, SEEK_END))) }
        self.path = path
        self.readOnly = readOnly
        self.fd = fd
        capacitySectors = bytes / Self.sectorSize
        // Punching a hole past the end of the file changes nothing; it tells whether the file
        // system supports it at all.
        canPunchHoles = !readOnly && sys_fallocate(fd, SYS_FALLOC_FL_PUNCH_HOLE | SYS_FALLOC_FL_KEEP_SIZE,
                                                   Int(bytes + Self.sectorSize), Int(Self.sectorSize)) == 0
        let name = "vd" + String(UnicodeScalar(UInt8(97 + index % 26)))
        serial = Array("swiftvmm-\(name)".utf8.prefix(Self.idLength))
        var features = Self.featureSizeMax | Self.featureSegMax | Self.featureBlockSize | Self.featureFlush
        if readOnly { features |= Self.featureReadOnly }
        if canPunchHoles { features |= Self.featureDiscard | Self.featureWriteZeroes }
        super.init(name: "virtio-blk \(name)", deviceType: 2, queueCount: 1, queueMaxSize: 256,
                   features: features, trace: trace)
    }

    deinit { close(fd) }

    /// A driver that did not accept FLUSH treats the disk as write-through (Linux's
    /// virtio_blk then never sends a flush), so every completed write must already be on
    /// stable storage: fdatasync before reporting it. Set when the driver starts the device,
    /// under the transport's processing lock, like the requests that read it.
    private var writeThrough = false

    public override func activate(features: UInt64) {
        writeThrough = features & Self.featureFlush == 0
    }

    public override func reset() {
        writeThrough = false
    }

    // MARK: Configuration (struct virtio_blk_config)

    public override var configSize: Int { 60 }

    public override func readConfig(offset: Int, size: Int) -> UInt64 {
        var bytes = [UInt8](repeating: 0, count: 64)
        func put(_ off: Int, _ v: UInt64, _ width: Int) {
            for i in 0..<width { bytes[off + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
        }
        put(0, capacitySectors, 8)
        put(8, UInt64(Self.sizeMax), 4)
        put(12, UInt64(Self.segMax), 4)
        put(20, Self.sectorSize, 4)                         // blk_size
        if canPunchHoles {
            put(36, UInt64(Self.maxDiscardSectors), 4)
            put(40, UInt64(Self.maxDiscardSegments), 4)
            put(44, 1, 4)                                   // discard_sector_alignment
            put(48, UInt64(Self.maxDiscardSectors), 4)
            put(52, UInt64(Self.maxDiscardSegments), 4)
            put(56, 1, 1)                                   // write_zeroes_may_unmap
        }
        var v: UInt64 = 0
        for i in 0..<size where offset + i < bytes.count { v |= UInt64(bytes[offset + i]) << (8 * UInt64(i)) }
        return v
    }

    // MARK: Requests

    public override func processQueue(_ queue: Virtqueue) {
        drain(queue) { (chain) throws(VirtqueueError) in try serve(&chain) }
    }

    /// Serve one request; returns the bytes written into the chain (data + status). Throws
    /// when there is no writable status byte to report anything in.
    public func serve(_ chain: inout DescriptorChain) throws(VirtqueueError) -> UInt32 {
        // The status byte is the last device-writable byte.
        let writable = chain.writableLength
        guard writable >= 1 else { throw .unanswerable(head: chain.head, "no device-writable status byte") }
        let dataIn = writable - 1
        var status = Self.statusOK
        var written: UInt64 = 0
        if let fault = chain.fault {
            guestError("request \(chain.head): \(fault)")
            status = Self.statusIOError
        } else {
            var header = (UInt64(0), UInt64(0))
            let haveHeader = withUnsafeMutableBytes(of: &header) { chain.gather(from: 0, into: $0.baseAddress!, count: 16) }
            if !haveHeader {
                guestError("request \(chain.head): header shorter than 16 bytes")
                status = Self.statusIOError
            } else {
                let type = UInt32(truncatingIfNeeded: UInt64(littleEndian: header.0))
                let sector = UInt64(littleEndian: header.1)
                (status, written) = perform(type: type, sector: sector, chain: chain, dataIn: dataIn)
            }
        }
        guard chain.scatter(from: [status], count: 1, at: dataIn) else {
            throw .unanswerable(head: chain.head, "status byte is not in writable guest RAM")
        }
        return UInt32(truncatingIfNeeded: written + 1)
    }

    private func perform(type: UInt32, sector: UInt64, chain: DescriptorChain, dataIn: UInt64) -> (UInt8, UInt64) {
        let dataOut = chain.readableLength - 16
        switch type {
        case Self.typeIn:
            // Data for a read must be device-writable: readable bytes after the header mean
            // the driver posted the buffer the wrong way round.
            guard dataOut == 0 else {
                guestError("read request \(chain.head) has \(dataOut) device-readable data bytes")
                return (Self.statusIOError, 0)
            }
            guard let offset = checkRange(sector: sector, bytes: dataIn, what: "read") else { return (Self.statusIOError, 0) }
            var pos = offset
            let ok = chain.forEachPiece(writable: true, from: 0, count: dataIn) { p, n in
                let r = fullPread(p, n, pos)
                pos += UInt64(n)
                return r
            }
            if !ok { return (Self.statusIOError, 0) }
            return (Self.statusOK, dataIn)
        case Self.typeOut:
            if readOnly {
                guestError("write to read-only \(name) at sector \(sector)")
                return (Self.statusIOError, 0)
            }
            guard dataIn == 0 else {
                guestError("write request \(chain.head) has \(dataIn) device-writable data bytes")
                return (Self.statusIOError, 0)
            }
            guard let offset = checkRange(sector: sector, bytes: dataOut, what: "write") else { return (Self.statusIOError, 0) }
            var pos = offset
            var ok = chain.forEachPiece(writable: false, from: 16, count: dataOut) { p, n in
                let r = fullPwrite(p, n, pos)
                pos += UInt64(n)
                return r
            }
            if ok && writeThrough { ok = fdatasync(fd) == 0 }
            return (ok ? Self.statusOK : Self.statusIOError, 0)
        case Self.typeFlush:
            if readOnly { return (Self.statusOK, 0) }
            return (fdatasync(fd) == 0 ? Self.statusOK : Self.statusIOError, 0)
        case Self.typeGetID:
            let n = Int(min(dataIn, UInt64(Self.idLength)))
            var id = serial + [UInt8](repeating: 0, count: Self.idLength - serial.count)
            let ok = id.withUnsafeMutableBytes { chain.scatter(from: $0.baseAddress!, count: n, at: 0) }
            return (ok ? Self.statusOK : Self.statusIOError, UInt64(n))
        case Self.typeDiscard, Self.typeWriteZeroes:
            guard canPunchHoles else { return (Self.statusUnsupported, 0) }
            return (discard(chain: chain, bytes: dataOut, zeroes: type == Self.typeWriteZeroes), 0)
        default:
            return (Self.statusUnsupported, 0)
        }
    }

    /// The byte offset of `sector` if [sector, sector + bytes) is whole sectors inside the disk.
    private func checkRange(sector: UInt64, bytes: UInt64, what: String) -> UInt64? {
        let sectors = bytes / Self.sectorSize
        guard bytes % Self.sectorSize == 0, sector <= capacitySectors, sectors <= capacitySectors - sector else {
            guestError("\(what) of \(bytes) bytes at sector \(sector) is outside \(name) (\(capacitySectors) sectors) or not whole sectors")
            return nil
        }
        return sector * Self.sectorSize
    }

    /// DISCARD / WRITE_ZEROES: an array of 16-byte ranges (sector, num_sectors, flags).
    private func discard(chain: DescriptorChain, bytes: UInt64, zeroes: Bool) -> UInt8 {
        guard bytes % 16 == 0, bytes > 0, bytes / 16 <= UInt64(Self.maxDiscardSegments) else {
            guestError("discard payload of \(bytes) bytes is malformed")
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
            // A punched hole reads back as zeroes, so it serves both requests.
            if count > 0 && sys_fallocate(fd, SYS_FALLOC_FL_PUNCH_HOLE | SYS_FALLOC_FL_KEEP_SIZE,
                                          Int(offset), Int(count * Self.sectorSize)) != 0 {
                return Self.statusIOError
            }
        }
        return Self.statusOK
    }

    private func fullPread(_ p: UnsafeMutableRawPointer, _ n: Int, _ offset: UInt64) -> Bool {
        var done = 0
        while done < n {
            let r = pread(fd, p + done, n - done, off_t(offset) + off_t(done))
            if r < 0 { if errno == EINTR { continue }; return false }
            if r == 0 { (p + done).initializeMemory(as: UInt8.self, repeating: 0, count: n - done); return true }
            done += r
        }
        return true
    }

    private func fullPwrite(_ p: UnsafeMutableRawPointer, _ n: Int, _ offset: UInt64) -> Bool {
        var done = 0
        while done < n {
            let r = pwrite(fd, p + done, n - done, off_t(offset) + off_t(done))
            if r < 0 { if errno == EINTR { continue }; return false }
            done += r
        }
        return true
    }
}
