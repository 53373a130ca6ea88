import Synchronization

/// A 16550A UART, the PC's COM port, as Linux's 8250 driver expects to find it.
///
/// Transmission is instant: a byte written to THR goes to the host console at once, so THR
/// is always empty again by the time the guest looks (LSR.THRE and TEMT always set). Received
/// bytes (host stdin) wait in a FIFO until the guest reads RBR. Interrupts go to the in-kernel
/// PIC/IOAPIC through `irq` (IRQ 4 for COM1); the line is driven only when its level changes.
///
/// Register map (offset from the base port; DLAB is LCR bit 7):
///   0  RBR (read) / THR (write)      DLL when DLAB=1
///   1  IER                           DLM when DLAB=1
///   2  IIR (read) / FCR (write)
///   3  LCR   4 MCR   5 LSR   6 MSR   7 SCR
public final class Serial16550: BusDevice, @unchecked Sendable {
    public static let com1Port: UInt64 = 0x3F8
    public static let com1IRQ: UInt32 = 4
    public static let portCount: UInt64 = 8
    /// Receive buffering, as on the real part: a 16-byte FIFO when FCR enables it, a single
    /// holding register when not. Input beyond that waits on the host side (in stdin's pipe or
    /// terminal buffer), so a guest that resets its FIFOs while booting loses at most what
    /// real hardware would, not everything typed ahead.
    public static let receiveCapacity = 16

    // Register bits used below (names as in Linux's serial_reg.h).
    static let ierRDI: UInt8 = 0x01, ierTHRI: UInt8 = 0x02, ierRLSI: UInt8 = 0x04, ierMSI: UInt8 = 0x08
    static let iirNoInt: UInt8 = 0x01, iirTHRI: UInt8 = 0x02, iirRDI: UInt8 = 0x04, iirRLSI: UInt8 = 0x06
    static let iirFIFOEnabled: UInt8 = 0xC0
    static let fcrEnable: UInt8 = 0x01, fcrClearRX: UInt8 = 0x02
    static let lcrDLAB: UInt8 = 0x80
    static let mcrDTR: UInt8 = 0x01, mcrRTS: UInt8 = 0x02, mcrOUT1: UInt8 = 0x04, mcrOUT2: UInt8 = 0x08
    static let mcrLoop: UInt8 = 0x10
    static let lsrDR: UInt8 = 0x01, lsrOE: UInt8 = 0x02, lsrTHRE: UInt8 = 0x20, lsrTEMT: UInt8 = 0x40
    static let msrCTS: UInt8 = 0x10, msrDSR: UInt8 = 0x20, msrRI: UInt8 = 0x40, msrDCD: UInt8 = 0x80

    struct State {
        var ier: UInt8 = 0
        var lcr: UInt8 = 0
        var mcr: UInt8 = 0
        var scr: UInt8 = 0
        var dll: UInt8 = 0x0C           // 9600 baud, what a PC BIOS leaves behind
        var dlm: UInt8 = 0
        var fifoEnabled = false
        var overrun = false
        /// THR-empty interrupt condition: set when THR empties (at once, after each write) or
        /// when THRI is enabled; cleared by a THR write or by reading IIR while it is the source.
        var thrEmptyPending = false
        /// Modem status delta bits (MSR 3:0), cleared by reading MSR.
        var msrDelta: UInt8 = 0
        var irqLevel = false
        var rx = ByteFIFO(capacity: Serial16550.receiveCapacity)
        var rxLimit: Int { fifoEnabled ? Serial16550.receiveCapacity : 1 }
        var rxSpace: Int { max(0, rxLimit - rx.count) }
    }

    private let state = Mutex(State())
    private let irq: IRQLine?
    private let console: Console
    /// Made readable when the guest frees room in a full receive buffer, so the input thread
    /// can hand over more without polling.
    public let roomAvailable: EventFD

    public init(name: String = "serial0 (COM1)", irq: IRQLine?, console: Console) {
        self.irq = irq
        self.console = console
        self.roomAvailable = EventFD()
        super.init(name: name)
    }

    // MARK: Guest side

    public override func read(offset: UInt64, size: Int) -> UInt64 {
        UInt64(state.withLock { s -> UInt8 in
            let value: UInt8
            switch offset {
            case 0:
                if s.lcr & Self.lcrDLAB != 0 { return s.dll }
                let wasFull = s.rxSpace == 0
                value = s.rx.pop() ?? 0
                if wasFull { roomAvailable.signal() }
            case 1:
                value = s.lcr & Self.lcrDLAB != 0 ? s.dlm : s.ier
            case 2:
                value = Self.interruptIdentification(s)
                // Reading IIR acknowledges a THR-empty interrupt (and only that one).
                if value & 0x0F == Self.iirTHRI { s.thrEmptyPending = false }
            case 3:
                value = s.lcr
            case 4:
                value = s.mcr
            case 5:
                value = Self.lineStatus(s)
                s.overrun = false
            case 6:
                value = Self.modemLines(s) | s.msrDelta
                s.msrDelta = 0
            case 7:
                value = s.scr
            default:
                value = 0xFF
            }
            updateIRQ(&s)
            return value
        })
    }

    public override func write(offset: UInt64, size: Int, value: UInt64) {
        let v = UInt8(truncatingIfNeeded: value)
        state.withLock { s in
            switch offset {
            case 0:
                if s.lcr & Self.lcrDLAB != 0 { s.dll = v; return }
                s.thrEmptyPending = false
                updateIRQ(&s)
                if s.mcr & Self.mcrLoop != 0 {
                    if s.rxSpace == 0 || !s.rx.push(v) { s.overrun = true }
                } else {
                    console.put(v)
                }
                // Transmitted instantly: THR is empty again.
                s.thrEmptyPending = true
            case 1:
                if s.lcr & Self.lcrDLAB != 0 { s.dlm = v; return }
                let enabledTHRI = v & Self.ierTHRI != 0 && s.ier & Self.ierTHRI == 0
                s.ier = v & 0x0F
                if s.ier & Self.ierTHRI == 0 {
                    s.thrEmptyPending = false
                } else if enabledTHRI {
                    s.thrEmptyPending = true     // THR is always empty here
                }
            case 2:
                // Unlike the datasheet, switching the FIFOs on or off keeps received bytes:
                // a guest that enables its FIFO while booting would otherwise lose whatever
                // was typed (or piped) ahead of it. An explicit "clear RX FIFO" still clears.
                if v & Self.fcrClearRX != 0 { s.rx.removeAll() }
                s.fifoEnabled = v & Self.fcrEnable != 0
                while s.rx.count > s.rxLimit { _ = s.rx.pop() }
            case 3:
                s.lcr = v
            case 4:
                let before = Self.modemLines(s)
                s.mcr = v & 0x1F
                let after = Self.modemLines(s)
                s.msrDelta |= Self.deltas(before: before, after: after)
            case 5, 6:
                break                           // LSR and MSR are read-only
            case 7:
                s.scr = v
            default:
                break
            }
            updateIRQ(&s)
        }
    }

    // MARK: Host side

    /// How many bytes `receive` would accept now.
    public var receiveSpace: Int { state.withLock { $0.rxSpace } }

    /// Bytes from the host (stdin) for the guest to read. Returns how many were taken.
    @discardableResult
    public func receive(_ bytes: UnsafeRawBufferPointer) -> Int {
        state.withLock { s in
            var taken = 0
            for b in bytes {
                guard s.rxSpace > 0, s.rx.push(b) else { break }
                taken += 1
            }
            updateIRQ(&s)
            return taken
        }
    }

    // MARK: Register logic

    static func lineStatus(_ s: State) -> UInt8 {
        var lsr = lsrTHRE | lsrTEMT
        if !s.rx.isEmpty { lsr |= lsrDR }
        if s.overrun { lsr |= lsrOE }
        return lsr
    }

    /// MSR 7:4. In loopback the modem outputs are wired back to the inputs; otherwise the
    /// other end is always there: carrier, data set ready, clear to send.
    static func modemLines(_ s: State) -> UInt8 {
        guard s.mcr & mcrLoop != 0 else { return msrDCD | msrDSR | msrCTS }
        var m: UInt8 = 0
        if s.mcr & mcrRTS != 0 { m |= msrCTS }
        if s.mcr & mcrDTR != 0 { m |= msrDSR }
        if s.mcr & mcrOUT1 != 0 { m |= msrRI }
        if s.mcr & mcrOUT2 != 0 { m |= msrDCD }
        return m
    }

    /// MSR 3:0: CTS, DSR and DCD changed; RI went from on to off (trailing edge).
    static func deltas(before: UInt8, after: UInt8) -> UInt8 {
        let changed = before ^ after
        var d: UInt8 = 0
        if changed & msrCTS != 0 { d |= 0x01 }
        if changed & msrDSR != 0 { d |= 0x02 }
        if before & msrRI != 0 && after & msrRI == 0 { d |= 0x04 }
        if changed & msrDCD != 0 { d |= 0x08 }
        return d
    }

    /// The highest-priority pending interrupt, as IIR reports it.
    static func interruptIdentification(_ s: State) -> UInt8 {
        let fifo = s.fifoEnabled ? iirFIFOEnabled : 0
        if s.ier & ierRLSI != 0 && s.overrun { return fifo | iirRLSI }
        if s.ier & ierRDI != 0 && !s.rx.isEmpty { return fifo | iirRDI }
        if s.ier & ierTHRI != 0 && s.thrEmptyPending { return fifo | iirTHRI }
        if s.ier & ierMSI != 0 && s.msrDelta != 0 { return fifo }
        return fifo | iirNoInt
    }

    @inline(__always)
    private func updateIRQ(_ s: inout State) {
        let level = Self.interruptIdentification(s) & iirNoIntMask == 0
        if level != s.irqLevel {
            s.irqLevel = level
            irq?.set(level)
        }
    }
    private let iirNoIntMask: UInt8 = 0x01

    /// For tests and reports: the register state without side effects.
    public var registers: (ier: UInt8, iir: UInt8, lcr: UInt8, mcr: UInt8, lsr: UInt8, irq: Bool) {
        state.withLock { s in (s.ier, Self.interruptIdentification(s), s.lcr, s.mcr, Self.lineStatus(s), s.irqLevel) }
    }
}
