internal import CHost
import Glibc
import Synchronization

/// Why talking to a vhost-user back-end failed. Each says which request, and what came back.
public enum VhostUserError: Error, CustomStringConvertible, Sendable {
    case io(String, request: String, errno: Int32)
    /// The back-end closed the connection (it exited, or crashed).
    case disconnected(String, request: String)
    case timedOut(String, request: String, seconds: Double)
    /// A reply that does not follow the protocol (wrong request, flags or size).
    case badReply(String, request: String, why: String)
    /// REPLY_ACK with a non-zero status: the back-end refused the request.
    case refused(String, request: String, status: UInt64)
    /// The back-end lacks something the device needs.
    case unsupported(String, why: String)

    public var description: String {
        switch self {
        case .io(let n, let r, let e): return "\(n): \(r): \(String(cString: strerror(e)))"
        case .disconnected(let n, let r): return "\(n): the back-end closed the connection (during \(r))"
        case .timedOut(let n, let r, let s): return "\(n): no reply to \(r) within \(s) s"
        case .badReply(let n, let r, let why): return "\(n): bad reply to \(r): \(why)"
        case .refused(let n, let r, let s): return "\(n): the back-end refused \(r) (status \(s))"
        case .unsupported(let n, let why): return "\(n): \(why)"
        }
    }
}

/// Messages with file descriptors attached (SCM_RIGHTS) on a Unix socket: the front-end's
/// transport, and a test back-end's.
public enum DescriptorPassing {
    /// Send `bytes` with `fds`. Returns bytes sent, or -errno.
    public static func send(_ socket: Int32, _ bytes: UnsafeRawBufferPointer, fds: [Int32]) -> Int {
        fds.withUnsafeBufferPointer { f in
            sys_send_with_fds(socket, bytes.baseAddress, UInt(bytes.count), f.baseAddress, Int32(f.count))
        }
    }

    /// Receive up to `buffer.count` bytes; descriptors that came along are appended to `fds`
    /// (at most 16; more are closed). Returns bytes read (0: the peer is gone), or -errno.
    public static func receive(_ socket: Int32, into buffer: UnsafeMutableRawBufferPointer, fds: inout [Int32]) -> Int {
        var got = [Int32](repeating: -1, count: 16)
        var n: Int32 = 0
        let r = sys_recv_with_fds(socket, buffer.baseAddress, UInt(buffer.count), &got, 16, &n)
        fds += got.prefix(Int(n))
        return r
    }
}

/// The front-end side of the vhost-user protocol (QEMU's docs/interop/vhost-user.rst): the
/// device's rings live in guest RAM, a back-end process (virtiofsd) maps that RAM and serves
/// them, and this is how we tell it where everything is. Messages go over a Unix stream
/// socket; file descriptors (guest RAM, kick and call eventfds) ride along as SCM_RIGHTS.
///
/// A message is a 12-byte header, `request`, `flags` (version 1, REPLY, NEED_REPLY) and
/// `size`, then `size` bytes of payload, all in the host's byte order. Only a few requests
/// have replies; with REPLY_ACK negotiated we ask for an acknowledgement of the others, so a
/// back-end that refuses a ring is noticed at once rather than by a guest that hangs.
///
/// Every exchange has a deadline (the socket's send and receive timeouts): a back-end that
/// stops answering costs the caller `timeout` seconds, never the run. Requests are
/// serialised by one lock; they come from the vCPU that starts or resets the device.
public final class VhostUserFrontend: Sendable {
    // Requests (front-end to back-end).
    enum Request: UInt32 {
        case getFeatures = 1, setFeatures = 2, setOwner = 3, setMemTable = 5
        case setVringNum = 8, setVringAddr = 9, setVringBase = 10, getVringBase = 11
        case setVringKick = 12, setVringCall = 13, getProtocolFeatures = 15, setProtocolFeatures = 16
        case getQueueNum = 17, setVringEnable = 18
    }
    /// The spec's names, for messages.
    static func describe(_ r: Request) -> String {
        switch r {
        case .getFeatures: return "GET_FEATURES"
        case .setFeatures: return "SET_FEATURES"
        case .setOwner: return "SET_OWNER"
        case .setMemTable: return "SET_MEM_TABLE"
        case .setVringNum: return "SET_VRING_NUM"
        case .setVringAddr: return "SET_VRING_ADDR"
        case .setVringBase: return "SET_VRING_BASE"
        case .getVringBase: return "GET_VRING_BASE"
        case .setVringKick: return "SET_VRING_KICK"
        case .setVringCall: return "SET_VRING_CALL"
        case .getProtocolFeatures: return "GET_PROTOCOL_FEATURES"
        case .setProtocolFeatures: return "SET_PROTOCOL_FEATURES"
        case .getQueueNum: return "GET_QUEUE_NUM"
        case .setVringEnable: return "SET_VRING_ENABLE"
        }
    }
    static let flagVersion: UInt32 = 0x1, flagReply: UInt32 = 0x4, flagNeedReply: UInt32 = 0x8
    static let headerSize = 12
    /// The largest reply we read; ours are at most 40 bytes.
    static let maxPayload = 256
    /// VHOST_USER_F_PROTOCOL_FEATURES, a bit of GET_FEATURES that says the back-end speaks
    /// the protocol-feature extension (and starts its rings disabled).
    public static let featureProtocolFeatures: UInt64 = 1 << 30
    // Protocol features we use.
    public static let protocolMultiQueue: UInt64 = 1 << 0
    public static let protocolReplyAck: UInt64 = 1 << 3
    /// The memory table holds at most this many regions without CONFIGURE_MEM_SLOTS.
    public static let maxRegions = 8

    /// Guest RAM as the back-end must map it: where the guest sees it, where we have it
    /// (the back-end translates our ring addresses through that), and where it is in `fd`.
    public struct MemoryRegion: Sendable {
        public var guestAddress: UInt64, size: UInt64, hostAddress: UInt64, fileOffset: UInt64
        public var fd: Int32
        public init(guestAddress: UInt64, size: UInt64, hostAddress: UInt64, fileOffset: UInt64, fd: Int32) {
            self.guestAddress = guestAddress; self.size = size; self.hostAddress = hostAddress
            self.fileOffset = fileOffset; self.fd = fd
        }
    }

    /// One ring to hand over: its size and its three parts' addresses in our address space,
    /// the eventfd the guest's kicks arrive on and the one the back-end signals to interrupt.
    public struct Ring: Sendable {
        public var index: Int, size: UInt16
        public var descriptors: UInt64, driverArea: UInt64, deviceArea: UInt64
        public var kickFD: Int32, callFD: Int32
        public init(index: Int, size: UInt16, descriptors: UInt64, driverArea: UInt64, deviceArea: UInt64,
                    kickFD: Int32, callFD: Int32) {
            self.index = index; self.size = size; self.descriptors = descriptors
            self.driverArea = driverArea; self.deviceArea = deviceArea; self.kickFD = kickFD; self.callFD = callFD
        }
    }

    public let name: String
    /// The connection (ours: closed when this goes). Pollable: readable or hung up means
    /// the back-end is gone, since it never speaks unasked on this socket.
    public let socket: Int32
    public let timeout: Double
    struct Session {
        var backendFeatures: UInt64 = 0
        var protocolFeatures: UInt64 = 0
        var connected = false
        /// Rings handed over and not taken back.
        var started: [Int] = []
    }
    private let session = Mutex(Session())

    /// Take over `socket`, a connected stream socket to the back-end.
    public init(socket: Int32, name: String, timeout: Double = 10) {
        self.socket = socket
        self.name = name
        self.timeout = timeout
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int(timeout.truncatingRemainder(dividingBy: 1) * 1e6))
        _ = setsockopt(socket, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        _ = setsockopt(socket, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(socket) }

    /// The device-level features the back-end offers (after `connect`).
    public var backendFeatures: UInt64 { session.withLock { $0.backendFeatures } }
    public var protocolFeatures: UInt64 { session.withLock { $0.protocolFeatures } }
    public var startedRings: [Int] { session.withLock { $0.started } }

    /// Meet the back-end: its features, the protocol features both sides know (MQ to check
    /// it serves `queueCount` queues, REPLY_ACK), and SET_OWNER. Returns its feature bits.
    @discardableResult
    public func connect(queueCount: Int) throws(VhostUserError) -> UInt64 {
        try session.withLock { s throws(VhostUserError) -> UInt64 in
            s.backendFeatures = try requestU64(.getFeatures)
            if s.backendFeatures & Self.featureProtocolFeatures != 0 {
                let offered = try requestU64(.getProtocolFeatures)
                s.protocolFeatures = offered & (Self.protocolMultiQueue | Self.protocolReplyAck)
                try send(.setProtocolFeatures, u64: s.protocolFeatures, ack: false)
            }
            try send(.setOwner, payload: [], ack: s.protocolFeatures & Self.protocolReplyAck != 0)
            if s.protocolFeatures & Self.protocolMultiQueue != 0 {
                let queues = try requestU64(.getQueueNum)
                guard queues >= UInt64(queueCount) else {
                    throw .unsupported(name, why: "the back-end serves \(queues) queues, the device needs \(queueCount)")
                }
            }
            s.connected = true
            return s.backendFeatures
        }
    }

    /// The driver set DRIVER_OK: the negotiated features, guest RAM, and each ring with its
    /// eventfds, enabled. A ring is live on the back-end once it has its kick eventfd.
    public func start(features: UInt64, memory: [MemoryRegion], rings: [Ring]) throws(VhostUserError) {
        try session.withLock { s throws(VhostUserError) in
            let ack = s.protocolFeatures & Self.protocolReplyAck != 0
            // The protocol-features bit is the back-end's, not the guest's: acked as QEMU does.
            try send(.setFeatures, u64: features | (s.backendFeatures & Self.featureProtocolFeatures), ack: ack)
            try setMemTable(memory, ack: ack)
            for ring in rings {
                try send(.setVringNum, payload: Self.vringState(ring.index, UInt32(ring.size)), ack: ack)
                try send(.setVringBase, payload: Self.vringState(ring.index, 0), ack: ack)
                var addr = Self.vringState(ring.index, 0)           // index, flags 0
                for v in [ring.descriptors, ring.deviceArea, ring.driverArea, 0] { Self.append(&addr, v) }
                try send(.setVringAddr, payload: addr, ack: ack)
                try send(.setVringCall, u64: UInt64(ring.index), fds: [ring.callFD], ack: ack)
                try send(.setVringKick, u64: UInt64(ring.index), fds: [ring.kickFD], ack: ack)
                if s.backendFeatures & Self.featureProtocolFeatures != 0 {
                    try send(.setVringEnable, payload: Self.vringState(ring.index, 1), ack: ack)
                }
                s.started.append(ring.index)
            }
        }
    }

    /// The driver reset the device: take every started ring back (GET_VRING_BASE stops it on
    /// the back-end, which answers once it has finished with it). Returns each ring's next
    /// available index as the back-end saw it.
    @discardableResult
    public func stop() throws(VhostUserError) -> [UInt16] {
        try session.withLock { s throws(VhostUserError) -> [UInt16] in
            var bases: [UInt16] = []
            while let index = s.started.first {
                s.started.removeFirst()
                let reply = try exchange(.getVringBase, payload: Self.vringState(index, 0), replySize: 8)
                bases.append(UInt16(truncatingIfNeeded: Self.u32(reply, 4)))
            }
            return bases
        }
    }

    /// Why the connection is no good any more, looked at between exchanges; nil if it is
    /// fine. The back-end never speaks unasked on this socket, but a poll on it also wakes for
    /// a reply the requester reads a moment later: so what counts is what is there now, with
    /// no exchange in flight (the session lock held). EOF or a reset means the back-end is
    /// gone; bytes nobody asked for break the protocol.
    public func connectionFailure() -> String? {
        session.withLock { _ -> String? in
            var byte: UInt8 = 0
            let n = recv(socket, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
            if n > 0 { return "sent a message nobody asked for" }
            if n == 0 { return "closed its connection" }
            switch errno {
            case EAGAIN, EINTR: return nil
            case ECONNRESET: return "closed its connection"
            default: return "broke its connection (\(String(cString: strerror(errno))))"
            }
        }
    }

    // MARK: Messages

    private func setMemTable(_ memory: [MemoryRegion], ack: Bool) throws(VhostUserError) {
        guard !memory.isEmpty, memory.count <= Self.maxRegions else {
            throw .unsupported(name, why: "guest RAM in \(memory.count) regions (1 to \(Self.maxRegions) can be shared)")
        }
        var p: [UInt8] = []
        Self.append32(&p, UInt32(memory.count))
        Self.append32(&p, 0)
        for r in memory { for v in [r.guestAddress, r.size, r.hostAddress, r.fileOffset] { Self.append(&p, v) } }
        try send(.setMemTable, payload: p, fds: memory.map(\.fd), ack: ack)
    }

    private func requestU64(_ request: Request) throws(VhostUserError) -> UInt64 {
        Self.u64(try exchange(request, payload: [], replySize: 8), 0)
    }

    private func send(_ request: Request, u64 value: UInt64, fds: [Int32] = [], ack: Bool) throws(VhostUserError) {
        var p: [UInt8] = []
        Self.append(&p, value)
        try send(request, payload: p, fds: fds, ack: ack)
    }

    /// Send a request without a reply of its own; with `ack`, ask for REPLY_ACK and check it.
    private func send(_ request: Request, payload: [UInt8], fds: [Int32] = [], ack: Bool) throws(VhostUserError) {
        try write(request, payload: payload, fds: fds, flags: ack ? Self.flagNeedReply : 0)
        guard ack else { return }
        let status = Self.u64(try readReply(request, size: 8), 0)
        guard status == 0 else { throw .refused(name, request: Self.describe(request), status: status) }
    }

    /// Send a request that has a reply, and return the reply's payload (`replySize` bytes).
    private func exchange(_ request: Request, payload: [UInt8], replySize: Int) throws(VhostUserError) -> [UInt8] {
        try write(request, payload: payload, fds: [], flags: 0)
        return try readReply(request, size: replySize)
    }

    private func write(_ request: Request, payload: [UInt8], fds: [Int32], flags: UInt32) throws(VhostUserError) {
        var message: [UInt8] = []
        message.reserveCapacity(Self.headerSize + payload.count)
        Self.append32(&message, request.rawValue)
        Self.append32(&message, Self.flagVersion | flags)
        Self.append32(&message, UInt32(payload.count))
        message += payload
        let sent = message.withUnsafeBytes { DescriptorPassing.send(socket, $0, fds: fds) }
        if sent == -Int(EAGAIN) { throw .timedOut(name, request: Self.describe(request), seconds: timeout) }
        if sent == -Int(EPIPE) || sent == -Int(ECONNRESET) { throw .disconnected(name, request: Self.describe(request)) }
        guard sent >= 0 else { throw .io(name, request: Self.describe(request), errno: Int32(-sent)) }
        guard sent == message.count else { throw .io(name, request: Self.describe(request) + " (short send)", errno: EIO) }
    }

    private func readReply(_ request: Request, size: Int) throws(VhostUserError) -> [UInt8] {
        let header = try readExactly(Self.headerSize, request)
        let code = Self.u32(header, 0), flags = Self.u32(header, 4), length = Self.u32(header, 8)
        guard code == request.rawValue else {
            throw .badReply(name, request: Self.describe(request), why: "reply is for request \(code)")
        }
        guard flags & 0x3 == Self.flagVersion, flags & Self.flagReply != 0 else {
            throw .badReply(name, request: Self.describe(request), why: "flags 0x\(String(flags, radix: 16))")
        }
        guard Int(length) == size else {
            throw .badReply(name, request: Self.describe(request), why: "payload of \(length) bytes, expected \(size)")
        }
        return try readExactly(size, request)
    }

    /// Read exactly `count` bytes (a stream socket may split a message). Descriptors the
    /// back-end sends with a reply are never wanted here: closed at once.
    private func readExactly(_ count: Int, _ request: Request) throws(VhostUserError) -> [UInt8] {
        precondition(count <= Self.maxPayload)
        var buffer = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            var fds: [Int32] = []
            let n = buffer.withUnsafeMutableBytes { b in
                DescriptorPassing.receive(socket, into: UnsafeMutableRawBufferPointer(rebasing: b[done...]), fds: &fds)
            }
            for fd in fds { close(fd) }
            if n == 0 { throw .disconnected(name, request: Self.describe(request)) }
            if n == -Int(EAGAIN) { throw .timedOut(name, request: Self.describe(request), seconds: timeout) }
            if n == -Int(ECONNRESET) { throw .disconnected(name, request: Self.describe(request)) }
            guard n > 0 else { throw .io(name, request: Self.describe(request), errno: Int32(-n)) }
            done += n
        }
        return buffer
    }

    // MARK: Wire helpers

    static func vringState(_ index: Int, _ num: UInt32) -> [UInt8] {
        var p: [UInt8] = []
        append32(&p, UInt32(truncatingIfNeeded: index))
        append32(&p, num)
        return p
    }
    static func append32(_ p: inout [UInt8], _ v: UInt32) { for i in 0..<4 { p.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
    static func append(_ p: inout [UInt8], _ v: UInt64) { for i in 0..<8 { p.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
    static func u32(_ p: [UInt8], _ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(p[at + $1]) << (8 * UInt32($1)) } }
    static func u64(_ p: [UInt8], _ at: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(p[at + $1]) << (8 * UInt64($1)) } }
}
