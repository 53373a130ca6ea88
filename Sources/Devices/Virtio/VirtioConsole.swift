import Glibc
import HostSupport
import RunControl
import Synchronization

/// virtio-console (virtio 1.2, 5.3) with VIRTIO_CONSOLE_F_MULTIPORT: named ports between the
/// guest and host file descriptors, which is how `swiftvmm exec` gives a command in the guest
/// its stdin, stdout and stderr and gets its exit status back.
///
/// Queues ("receive" is the guest's: host → guest): port 0 has 0 and 1, the control channel 2
/// (receive) and 3 (transmit), port n ≥ 1 has 2 + 2n and 3 + 2n.
///
/// The handshake, as Linux's virtio_console drives it: the driver posts control buffers and
/// sends DEVICE_READY; the device answers with a PORT_ADD per port; the driver sets each port
/// up and sends PORT_READY; the device then says what the port is: CONSOLE_PORT for port 0
/// (Linux makes it hvc0), PORT_OPEN(1) (the host side is connected) and PORT_NAME (which
/// Linux shows in /sys/class/virtio-ports/vportNpM/name). The driver's own PORT_OPEN says a
/// program in the guest opened or closed the port.
///
/// Host input (one port at most: the device thread polls one host fd) is read on the device
/// thread straight into the guest's receive buffers, and only while the guest has the port
/// open and buffers posted, so no byte taken from the fd waits on the host side. Its end
/// becomes PORT_OPEN(0): Linux answers reads with EOF while the host side is not connected.
/// Guest output goes to each port's sink (`VirtioConsolePorts.swift`).
///
/// Linux also holds writes while the host side is not connected, so a port whose input has
/// ended takes no more output: give input a port of its own.
///
/// An owner builds it from its ports, puts it on a `VirtioPCI` and starts that transport's
/// device thread like any other device's; waits on `changed` and reads `collected(port:)`
/// for a memory port (the exit status); and at the end of the run, once the vCPUs have
/// stopped, calls `finish(transport)`, so every byte the guest wrote reaches its fd.
public final class VirtioConsole: VirtioDeviceModel {
    public static let featureSize: UInt64 = 1 << 0
    public static let featureMultiport: UInt64 = 1 << 1
    public static let featureEmergencyWrite: UInt64 = 1 << 2

    /// struct virtio_console_control's events, by Linux's names (the spec's DEVICE_ADD and
    /// DEVICE_REMOVE are PORT_ADD and PORT_REMOVE).
    public enum ControlEvent: UInt16, Sendable, CustomStringConvertible {
        case deviceReady = 0, portAdd = 1, portRemove = 2, portReady = 3
        case consolePort = 4, resize = 5, portOpen = 6, portName = 7

        public var description: String {
            switch self {
            case .deviceReady: return "DEVICE_READY"
            case .portAdd: return "PORT_ADD"
            case .portRemove: return "PORT_REMOVE"
            case .portReady: return "PORT_READY"
            case .consolePort: return "CONSOLE_PORT"
            case .resize: return "RESIZE"
            case .portOpen: return "PORT_OPEN"
            case .portName: return "PORT_NAME"
            }
        }
    }

    /// le32 id, le16 event, le16 value; PORT_NAME's name follows in the same buffer.
    public static let controlHeaderSize = 8
    public static let controlReceiveQueue = 2, controlTransmitQueue = 3
    public static let maxPorts = 16
    public static let maxNameLength = 127
    static let queueSize: UInt16 = 64
    /// An fd port's backlog: what the guest can write ahead of a slow reader.
    public static let backlogCapacity = 256 << 10
    /// What a memory port keeps (an exit status is a few bytes).
    public static let memoryLimit = 64 << 10
    /// Bytes read from the host input into one receive buffer at most (Linux posts 4 KiB ones).
    public static let maxInputPerBuffer = 64 << 10
    static let maxInputSegments = 16

    public static func receiveQueue(port: Int) -> Int { port == 0 ? 0 : 2 + 2 * port }
    public static func transmitQueue(port: Int) -> Int { receiveQueue(port: port) + 1 }

    public let ports: [Port]
    public let counters: VirtioCounters
    public let portCounters: [PortCounters]
    /// Control messages from the driver, to it, and dropped because too many were waiting for
    /// control buffers.
    public let controlMessagesIn = Atomic<UInt64>(0)
    public let controlMessagesOut = Atomic<UInt64>(0)
    public let controlMessagesDropped = Atomic<UInt64>(0)
    /// Signalled when a memory port collected bytes or the guest opened or closed a port: an
    /// owner waiting for the status port polls it, then reads `collected(port:)`.
    public let changed = EventFD()

    public var deviceType: UInt16 { 3 }
    public var queueCount: Int { 2 * (ports.count + 1) }
    public var queueMaxSize: UInt16 { Self.queueSize }
    public var deviceFeatures: UInt64 { Self.featureMultiport | Self.featureEmergencyWrite }

    let sinks: [ConsoleSink]
    /// Each port's name as sent in PORT_NAME (empty: none).
    let names: [[UInt8]]
    let inputPort: Int?
    let configBytes: [UInt8]

    struct PortState {
        /// The driver said PORT_READY(1).
        var ready = false
        /// A program in the guest has the port open (the driver's last PORT_OPEN).
        var guestOpen = false
        /// Bytes of the chain at the head of the transmit queue already in the sink: a chain
        /// larger than the room left goes in pieces.
        var transmitTaken: UInt64 = 0
    }

    struct ControlMessage {
        var id: UInt32
        var event: ControlEvent
        var value: UInt16
    }

    /// Messages waiting for control receive buffers, oldest first; fixed storage.
    struct ControlBacklog {
        private var storage: [ControlMessage]
        private var head = 0
        private(set) var count = 0

        init(capacity: Int) { storage = Array(repeating: ControlMessage(id: 0, event: .deviceReady, value: 0), count: capacity) }

        var capacity: Int { storage.count }
        var first: ControlMessage? { count == 0 ? nil : storage[head] }

        mutating func append(_ m: ControlMessage) -> Bool {
            guard count < storage.count else { return false }
            storage[(head + count) % storage.count] = m
            count += 1
            return true
        }

        mutating func removeFirst() {
            head = (head + 1) % storage.count
            count -= 1
        }

        mutating func removeAll() { head = 0; count = 0 }
    }

    /// What the device thread keeps between requests; its own lock (taken inside the
    /// transport's serving lock, never the other way round). Unchecked Sendable: `iovecs` is
    /// memory this device alone allocates and frees.
    struct State: @unchecked Sendable {
        var ports: [PortState]
        var pending: ControlBacklog
        /// The host input reached its end (or failed). Kept across a reset: the fd stays where it is.
        var inputEnded = false
        let iovecs: UnsafeMutablePointer<iovec>
    }
    let state: Mutex<State>

    /// The device with `ports` (port 0 first: the console). Each `.fd` output gets its writer
    /// thread now.
    public init(ports: [Port], trace: TraceOptions) throws(ConfigurationError) {
        guard (1...Self.maxPorts).contains(ports.count) else { throw .portCount(ports.count) }
        var seen = Set<String>()
        for (i, p) in ports.enumerated() {
            if let name = p.name {
                let bytes = Array(name.utf8)
                guard (1...Self.maxNameLength).contains(bytes.count), !bytes.contains(0), !bytes.contains(UInt8(ascii: "/")) else {
                    throw .badName(port: i, name)
                }
                guard seen.insert(name).inserted else { throw .duplicateName(name) }
            }
            if let fd = p.input, fd < 0 { throw .badFD(port: i, fd) }
            if case .fd(let fd) = p.output, fd < 0 { throw .badFD(port: i, fd) }
        }
        let inputs = ports.indices.filter { ports[$0].input != nil }
        guard inputs.count <= 1 else { throw .moreThanOneInput(ports: inputs) }

        self.ports = ports
        inputPort = inputs.first
        names = ports.map { Array(($0.name ?? "").utf8) }
        counters = VirtioCounters(name: "virtio-console", trace: trace)
        portCounters = ports.map { _ in PortCounters() }
        var sinks: [ConsoleSink] = []
        for (i, p) in ports.enumerated() {
            let kind: ConsoleSink.Kind
            switch p.output {
            case .fd(let fd): kind = .fd(fd)
            case .memory: kind = .memory
            case .discard: kind = .discard
            }
            let label = "port \(i)" + (p.name.map { " (\($0))" } ?? "")
            sinks.append(ConsoleSink(kind: kind, label: label, counters: portCounters[i], changed: changed))
        }
        self.sinks = sinks
        // cols, rows (0: no F_SIZE), max_nr_ports, emerg_wr (reads as 0).
        var config = [UInt8](repeating: 0, count: 12)
        for i in 0..<4 { config[4 + i] = UInt8(truncatingIfNeeded: ports.count >> (8 * i)) }
        configBytes = config
        // A full handshake queues a PORT_ADD per port and up to three messages per PORT_READY.
        state = Mutex(State(ports: Array(repeating: PortState(), count: ports.count),
                            pending: ControlBacklog(capacity: 4 * ports.count + 8),
                            iovecs: .allocate(capacity: Self.maxInputSegments)))
        for (i, sink) in sinks.enumerated() { sink.start(name: "vcon-out-\(i)") }
    }

    deinit {
        for sink in sinks { _ = sink.close() }
        state.withLock { $0.iovecs.deallocate() }
    }

    // MARK: What the owner asks

    /// The port named `name`.
    public func port(named name: String) -> Int? { ports.firstIndex { $0.name == name } }

    /// What memory port `port` has collected so far (empty for other ports).
    public func collected(port: Int) -> [UInt8] { sinks[port].collected }

    /// Whether a program in the guest has port `port` open.
    public func guestOpen(port: Int) -> Bool { state.withLock { $0.ports[port].guestOpen } }

    /// Whether the driver has set port `port` up (PORT_READY).
    public func isReady(port: Int) -> Bool { state.withLock { $0.ports[port].ready } }

    /// Control messages waiting for the driver's control buffers.
    public var pendingControlMessages: Int { state.withLock { $0.pending.count } }

    /// Wait until every byte taken from the guest so far is written to its fd (or the fd has
    /// failed), at most `seconds`. False if the time ran out first.
    public func flushOutputs(waitingUpTo seconds: Double) -> Bool {
        let deadline = monotonicNanoseconds() + UInt64(max(0, seconds) * 1e9)
        while !sinks.allSatisfy(\.isFlushed) {
            if monotonicNanoseconds() >= deadline { return false }
            usleep(200)
        }
        return true
    }

    /// Stop the writer threads once they have written what they hold, waiting at most
    /// `seconds`; from now on guest output is dropped (and counted). False if a writer is
    /// still stuck in a write (to a reader that does not read): it is left to go with the process.
    public func closeOutputs(waitingUpTo seconds: Double) -> Bool {
        let deadline = monotonicNanoseconds() + UInt64(max(0, seconds) * 1e9)
        while !sinks.map({ $0.close() }).allSatisfy({ $0 }) {
            if monotonicNanoseconds() >= deadline { break }
            usleep(200)
        }
        return sinks.map { $0.joinWriter() }.allSatisfy { $0 }
    }

    /// The end of a run, once the vCPUs have stopped (the device thread stopped or not): serve
    /// what the guest left in its transmit queues, wait until every byte is written out, and
    /// stop the writer threads, in at most `seconds`. False if the time ran out with bytes
    /// unwritten (a reader that does not read); bytes dropped because a reader went away are
    /// in `portCounters`. (If the guest reset the device at power-off, as Linux does,
    /// `willReset` took the chains then; if not, they are still in the rings and served here.)
    public func finish(_ transport: VirtioPCI, waitingUpTo seconds: Double = 2) -> Bool {
        precondition(transport.device === self, "finish with the console's own transport")
        let deadline = monotonicNanoseconds() + UInt64(max(0, seconds) * 1e9)
        func left() -> Double { Double(deadline &- min(deadline, monotonicNanoseconds())) / 1e9 }
        var complete = true
        while true {
            for p in ports.indices { transport.processNow(Self.transmitQueue(port: p)) }
            // Chains stay in a ring only where a backlog was full: once the writers have made
            // room, serve again. Asked of the rings, not of the backlogs: a writer may make
            // room (and stop waiting) between the serving and this look, chains still posted.
            let posted = ports.indices.contains { transport.queueHasAvailable(Self.transmitQueue(port: $0)) }
            guard posted else { break }
            guard left() > 0, flushOutputs(waitingUpTo: left()) else { complete = false; break }
        }
        complete = flushOutputs(waitingUpTo: left()) && complete
        return closeOutputs(waitingUpTo: left()) && complete
    }

    // MARK: Configuration (struct virtio_console_config)

    public var configSize: Int { configBytes.count }
    public func readConfig(offset: Int, size: Int) -> UInt64 { Virtio.littleEndian(configBytes, offset: offset, size: size) }

    /// emerg_wr (offset 8): one byte for port 0's output, from a vCPU. The rest is read-only.
    public func writeConfig(offset: Int, size: Int, value: UInt64) {
        guard offset == 8 else {
            counters.guestError("write of \(size) bytes to read-only configuration offset \(offset)")
            return
        }
        sinks[0].put(UInt8(truncatingIfNeeded: value))
    }

    // MARK: Queues

    public func attach(kicks: [EventFD]) {
        for (p, sink) in sinks.enumerated() { sink.attach(kick: kicks[Self.transmitQueue(port: p)]) }
    }

    public func serve(_ index: Int, _ queues: inout VirtioQueues) -> Bool {
        switch index {
        case Self.controlTransmitQueue:
            return state.withLock { s in
                let more = drain(index, &queues) { chain in
                    receiveControl(chain, &s)
                    return 0
                }
                return sendControl(&s, &queues) || more
            }
        case Self.controlReceiveQueue:
            return state.withLock { s in sendControl(&s, &queues) }
        default:
            let port = index < 2 ? 0 : index / 2 - 1
            if index % 2 == 1 { return transmit(port: port, index, &queues) }
            // Receive buffers were posted. The input (if this port has it) goes on when the
            // device thread's poll finds the fd readable; ask for the next kick.
            _ = queues.rings[index].enableNotifications()
            return false
        }
    }

    /// Back to the initial state: no port set up or open, no control message waiting. What
    /// the sinks hold is still written out; the host input stays where it is (nothing read
    /// from it is held here: it went into the guest's buffers), and an input that had ended
    /// is reported as such at the next PORT_READY.
    public func reset() {
        state.withLock { s in
            for i in s.ports.indices { s.ports[i] = PortState() }
            s.pending.removeAll()
        }
        changed.signal()
    }

    /// The guest's write() returned as soon as its buffer was posted, so what is still in a
    /// transmit ring is output the guest considers written. Take it, into the backlog's reset
    /// allowance if need be (what does not fit is dropped and counted); nothing is pushed, the
    /// rings are going away.
    public func willReset(_ queues: inout VirtioQueues) {
        state.withLock { s in
            var chain = DescriptorChain(reserving: 0)
            swap(&chain, &queues.scratch)
            defer { swap(&chain, &queues.scratch) }
            for p in ports.indices {
                let q = Self.transmitQueue(port: p)
                var offset = s.ports[p].transmitTaken
                // At most a ring's worth: pop refuses an avail index more than a ring ahead.
                while (try? queues.rings[q].pop(into: &chain)) == true {
                    if chain.fault == nil {
                        let length = chain.readableLength
                        if offset > length { offset = 0 }
                        _ = sinks[p].take(chain, from: offset, count: length - offset, dropExcess: true)
                    }
                    offset = 0
                }
            }
        }
    }

    // MARK: Guest output

    /// Move the guest's chains into the port's sink, in order, until the ring is empty, the
    /// turn's budget is spent (true), or the sink is full: then the chain stays in the ring
    /// with what was taken of it remembered, and the sink's writer kicks this queue once it
    /// has made room.
    func transmit(port p: Int, _ index: Int, _ queues: inout VirtioQueues) -> Bool {
        let sink = sinks[p]
        return state.withLock { s in
            var chain = DescriptorChain(reserving: 0)
            swap(&chain, &queues.scratch)
            defer { swap(&chain, &queues.scratch) }
            var served = 0
            var pushed = false
            defer { if pushed && queues.rings[index].needsInterrupt() { queues.interrupt(index) } }
            repeat {
                while true {
                    if served == Virtio.chainsPerTurn { return true }
                    do throws(VirtqueueError) {
                        guard try queues.rings[index].pop(into: &chain) else { break }
                    } catch {
                        queues.broken(index, error)
                        return false
                    }
                    served += 1
                    if let fault = chain.fault {
                        counters.guestError("port \(p) output \(chain.head): \(fault)")
                    } else {
                        let length = chain.readableLength
                        var offset = s.ports[p].transmitTaken
                        if offset > length { offset = 0 }       // not the chain it was: start it afresh
                        offset += sink.take(chain, from: offset, count: length - offset, dropExcess: false)
                        if offset < length {
                            queues.rings[index].unpop(1)
                            s.ports[p].transmitTaken = offset
                            return false
                        }
                    }
                    s.ports[p].transmitTaken = 0
                    counters.requests.wrappingAdd(1, ordering: .relaxed)
                    queues.rings[index].push(head: chain.head, written: 0)
                    pushed = true
                }
            } while queues.rings[index].enableNotifications()
            return false
        }
    }

    // MARK: Host input

    public var hostFD: Int32 { inputPort.flatMap { ports[$0].input } ?? -1 }

    /// Read the input only while it can go somewhere: the port open in the guest (Linux drops
    /// what arrives on a port nobody has open) and a receive buffer posted.
    public func hostEvents(_ queues: borrowing VirtioQueues) -> Int16 {
        guard let p = inputPort else { return 0 }
        let wanted = state.withLock { s in !s.inputEnded && s.ports[p].guestOpen }
        return wanted && queues.rings[Self.receiveQueue(port: p)].hasAvailable ? Int16(POLLIN) : 0
    }

    /// One read, straight into the next receive buffer: poll said the fd is ready, so it does
    /// not block (a regular file always is; its end is a read of 0 like a pipe's).
    public func handleHostEvent(_ revents: Int16, _ queues: inout VirtioQueues) -> Bool {
        guard let p = inputPort, let fd = ports[p].input, revents != 0 else { return false }
        let q = Self.receiveQueue(port: p)
        return state.withLock { s in
            guard !s.inputEnded, s.ports[p].guestOpen else { return false }
            var chain = DescriptorChain(reserving: 0)
            swap(&chain, &queues.scratch)
            defer { swap(&chain, &queues.scratch) }
            do throws(VirtqueueError) {
                guard try queues.rings[q].pop(into: &chain) else {
                    _ = queues.rings[q].enableNotifications()
                    return false
                }
            } catch {
                queues.broken(q, error)
                return false
            }
            var segments = 0, room = 0
            if chain.fault == nil {
                for seg in chain.segments where seg.deviceWritable && seg.length > 0 {
                    guard segments < Self.maxInputSegments, room < Self.maxInputPerBuffer else { break }
                    let n = min(Int(seg.length), Self.maxInputPerBuffer - room)
                    s.iovecs[segments] = iovec(iov_base: seg.pointer, iov_len: n)
                    segments += 1
                    room += n
                }
            }
            guard room > 0 else {
                counters.guestError("port \(p) receive buffer \(chain.head): \(chain.fault?.description ?? "no device-writable bytes")")
                deliver(chain.head, 0, q, &queues)
                return false
            }
            let n = readv(fd, s.iovecs, Int32(segments))
            if n > 0 {
                portCounters[p].bytesIn.wrappingAdd(UInt64(n), ordering: .relaxed)
                counters.requests.wrappingAdd(1, ordering: .relaxed)
                deliver(chain.head, UInt32(n), q, &queues)
                return false
            }
            queues.rings[q].unpop(1)
            if n < 0 && (errno == EINTR || errno == EAGAIN) { return false }
            if n < 0, counters.trace.contains(.guestErrors) {
                Diagnostics.line("swiftvmm: \(name): port \(p): reading fd \(fd): \(String(cString: strerror(errno))); taken as its end")
            }
            // The end (or an input that failed, the same to a reader). Every byte read before
            // it is already in the used ring: each read goes into a buffer that is pushed at
            // once, and used->idx is published with release ordering before this message is.
            // Linux's reader takes data first: port_fops_read (and will_read_block, which it
            // waits on) ask port_has_data, which pulls used buffers with virtqueue_get_buf,
            // before they look at host_connected, so the guest reads every byte, then 0.
            s.inputEnded = true
            post(&s, .portOpen, port: p, value: 0)
            _ = sendControl(&s, &queues)
            return false
        }
    }

    private func deliver(_ head: UInt16, _ written: UInt32, _ q: Int, _ queues: inout VirtioQueues) {
        queues.rings[q].push(head: head, written: written)
        if queues.rings[q].needsInterrupt() { queues.interrupt(q) }
        // Ask for a kick when the driver posts the next buffer, in case this was the last one.
        _ = queues.rings[q].enableNotifications()
    }

    // MARK: Control messages

    /// One message from the driver. Mistakes are counted and the message ignored.
    private func receiveControl(_ chain: DescriptorChain, _ s: inout State) {
        if let fault = chain.fault {
            counters.guestError("control message \(chain.head): \(fault)")
            return
        }
        var raw: UInt64 = 0
        guard chain.readableLength >= UInt64(Self.controlHeaderSize),
              withUnsafeMutableBytes(of: &raw, { chain.gather(from: 0, into: $0.baseAddress!, count: Self.controlHeaderSize) }) else {
            counters.guestError("control message \(chain.head): \(chain.readableLength) bytes, shorter than its 8-byte header")
            return
        }
        controlMessagesIn.wrappingAdd(1, ordering: .relaxed)
        raw = UInt64(littleEndian: raw)
        let id = UInt32(truncatingIfNeeded: raw), value = UInt16(truncatingIfNeeded: raw >> 48)
        let code = UInt16(truncatingIfNeeded: raw >> 32)
        guard let event = ControlEvent(rawValue: code) else {
            counters.guestError("control message \(chain.head): unknown event \(code)")
            return
        }
        // DEVICE_READY is about the device, its id is VIRTIO_CONSOLE_BAD_ID; the others name a port.
        let port = Int(id) < ports.count ? Int(id) : nil
        switch event {
        case .deviceReady:
            guard value == 1 else {
                if counters.trace.contains(.guestErrors) { Diagnostics.line("swiftvmm: \(name): the driver could not set the device up") }
                return
            }
            for p in ports.indices { post(&s, .portAdd, port: p, value: 1) }
        case .portReady:
            guard let port else {
                counters.guestError("PORT_READY for port \(id); there are \(ports.count)")
                return
            }
            guard value == 1 else {
                // The driver could not set this port up (out of memory): nothing to tell it.
                s.ports[port].ready = false
                return
            }
            s.ports[port].ready = true
            if port == 0 { post(&s, .consolePort, port: 0, value: 1) }
            // PORT_OPEN before PORT_NAME: a guest program waits for the name in sysfs and
            // opens the port then; Linux handles control messages in order, so by the time the
            // name is there the host side is connected, and a first read does not see EOF.
            post(&s, .portOpen, port: port, value: port == inputPort && s.inputEnded ? 0 : 1)
            if !names[port].isEmpty { post(&s, .portName, port: port, value: 1) }
        case .portOpen:
            guard let port else {
                counters.guestError("PORT_OPEN for port \(id); there are \(ports.count)")
                return
            }
            s.ports[port].guestOpen = value != 0
            changed.signal()
        case .portAdd, .portRemove, .consolePort, .resize, .portName:
            counters.guestError("control message \(chain.head): \(event) is the device's to send, not the driver's")
        }
    }

    /// Queue a message for the driver. The backlog is bounded: a driver that keeps asking
    /// (DEVICE_READY in a loop) without posting control buffers loses the excess.
    private func post(_ s: inout State, _ event: ControlEvent, port: Int, value: UInt16) {
        if !s.pending.append(ControlMessage(id: UInt32(port), event: event, value: value)) {
            controlMessagesDropped.wrappingAdd(1, ordering: .relaxed)
            counters.guestError("\(s.pending.capacity) control messages wait for control buffers; \(event) for port \(port) dropped")
        }
    }

    /// Send waiting messages into the driver's control receive buffers, oldest first, until
    /// one or the other runs out (or the turn's budget: true).
    private func sendControl(_ s: inout State, _ queues: inout VirtioQueues) -> Bool {
        let q = Self.controlReceiveQueue
        guard queues.rings[q].isActive else { return false }
        var chain = DescriptorChain(reserving: 0)
        swap(&chain, &queues.scratch)
        defer { swap(&chain, &queues.scratch) }
        var taken = 0
        var pushed = false
        defer { if pushed && queues.rings[q].needsInterrupt() { queues.interrupt(q) } }
        while let message = s.pending.first {
            if taken == Virtio.chainsPerTurn { return true }
            do throws(VirtqueueError) {
                guard try queues.rings[q].pop(into: &chain) else {
                    // Out of buffers: ask for a kick when the driver posts more (and look once
                    // more, in case it just did).
                    if queues.rings[q].enableNotifications() { continue }
                    return false
                }
            } catch {
                queues.broken(q, error)
                return false
            }
            taken += 1
            let name = message.event == .portName ? names[Int(message.id)] : []
            let length = Self.controlHeaderSize + name.count
            guard chain.fault == nil, chain.writableLength >= UInt64(length) else {
                // Unusable: hand it back empty; the message waits for the next buffer.
                counters.guestError("control buffer \(chain.head): \(chain.fault?.description ?? "\(chain.writableLength) bytes for a \(length)-byte \(message.event)")")
                queues.rings[q].push(head: chain.head, written: 0)
                pushed = true
                continue
            }
            var header = (UInt64(message.id) | UInt64(message.event.rawValue) << 32 | UInt64(message.value) << 48).littleEndian
            _ = withUnsafeBytes(of: &header) { chain.scatter(from: $0.baseAddress!, count: Self.controlHeaderSize, at: 0) }
            if !name.isEmpty { _ = name.withUnsafeBytes { chain.scatter(from: $0.baseAddress!, count: name.count, at: UInt64(Self.controlHeaderSize)) } }
            queues.rings[q].push(head: chain.head, written: UInt32(length))
            pushed = true
            s.pending.removeFirst()
            controlMessagesOut.wrappingAdd(1, ordering: .relaxed)
        }
        return false
    }
}
