import Devices
import Foundation
import RunControl
import Testing

/// The UART's registers, driven as the 8250 driver does, without a VM.
@Suite("16550A UART")
struct SerialTests {
    /// A UART whose console writes into a pipe we can read back.
    final class Harness {
        let pipe = Pipe()
        let serial: Serial16550
        init() {
            serial = Serial16550(irq: nil, console: Console(fd: pipe.fileHandleForWriting.fileDescriptor))
        }
        func out(_ offset: UInt64, _ value: UInt8) { serial.write(offset: offset, size: 1, value: UInt64(value)) }
        func inb(_ offset: UInt64) -> UInt8 { UInt8(serial.read(offset: offset, size: 1)) }
        func output() -> [UInt8] {
            try? pipe.fileHandleForWriting.close()
            return Array(pipe.fileHandleForReading.readDataToEndOfFile())
        }
    }

    @Test("THR writes reach the console; LSR shows the transmitter always empty")
    func transmit() {
        let h = Harness()
        #expect(h.inb(5) & 0x60 == 0x60)
        for b in Array("hi\n".utf8) { h.out(0, b) }
        #expect(h.inb(5) & 0x60 == 0x60)
        #expect(h.output() == Array("hi\n".utf8))
    }

    @Test("scratch register, divisor latch behind DLAB, IER keeps 4 bits")
    func registers() {
        let h = Harness()
        h.out(7, 0xA5)
        #expect(h.inb(7) == 0xA5)
        h.out(3, 0x80)               // DLAB
        h.out(0, 0x01); h.out(1, 0x02)
        #expect(h.inb(0) == 0x01 && h.inb(1) == 0x02)
        h.out(3, 0x03)               // 8N1, DLAB off
        h.out(1, 0xFF)
        #expect(h.inb(1) == 0x0F)
        h.out(3, 0x80)
        #expect(h.inb(0) == 0x01)    // divisor untouched by the IER write
        h.out(3, 0x03)
        #expect(h.output().isEmpty)  // nothing was transmitted
    }

    @Test("IIR: FIFO bits, THR-empty interrupt raised by enabling THRI and acknowledged by reading IIR")
    func interruptIdentification() {
        let h = Harness()
        #expect(h.inb(2) == 0x01)
        h.out(2, 0x07)               // enable and clear FIFOs
        #expect(h.inb(2) == 0xC1)
        h.out(1, 0x02)               // THRI
        #expect(h.serial.registers.irq)
        #expect(h.inb(2) == 0xC2)    // reading it acknowledges...
        #expect(h.inb(2) == 0xC1)    // ...so it is gone
        #expect(!h.serial.registers.irq)
        h.out(0, 0x41)               // a transmitted byte empties THR again: pending once more
        #expect(h.serial.registers.irq)
        #expect(h.inb(2) == 0xC2)
        h.out(1, 0x00)
        #expect(!h.serial.registers.irq)
    }

    @Test("received bytes: LSR.DR, RBR in order, receive-data interrupt with priority over THRE")
    func receive() {
        let h = Harness()
        h.out(2, 0x01)               // FIFOs on
        h.out(1, 0x03)               // RDI + THRI
        _ = h.inb(2)                 // ack THRE
        let taken = Array("ab".utf8).withUnsafeBytes { h.serial.receive($0) }
        #expect(taken == 2)
        #expect(h.inb(5) & 0x01 == 0x01)
        #expect(h.inb(2) & 0x0F == 0x04)
        #expect(h.serial.registers.irq)
        #expect(h.inb(0) == UInt8(ascii: "a"))
        #expect(h.inb(0) == UInt8(ascii: "b"))
        #expect(h.inb(5) & 0x01 == 0)
        #expect(!h.serial.registers.irq)
    }

    @Test("the receive buffer is one byte without FIFOs, 16 with, and says how much room it has")
    func receiveBound() {
        let h = Harness()
        let big = [UInt8](repeating: 0x55, count: Serial16550.receiveCapacity + 10)
        #expect(big.withUnsafeBytes { h.serial.receive($0) } == 1)
        #expect(h.serial.receiveSpace == 0)
        h.out(2, 0x01)               // enable FIFOs: the waiting byte is kept
        #expect(h.inb(5) & 0x01 == 0x01)
        #expect(big.withUnsafeBytes { h.serial.receive($0) } == 15)
        #expect(h.serial.receiveSpace == 0)
        h.out(2, 0x03)               // clear RX FIFO: now it is gone
        #expect(h.inb(5) & 0x01 == 0)
        #expect(big.withUnsafeBytes { h.serial.receive($0) } == 16)
        #expect(h.serial.receiveSpace == 0)
        _ = h.inb(0)
        #expect(h.serial.receiveSpace == 1)
    }

    @Test("loopback: THR comes back in RBR, not on the console; MSR mirrors MCR")
    func loopback() {
        let h = Harness()
        #expect(h.inb(6) & 0xF0 == 0xB0)       // DCD, DSR, CTS when not looped
        h.out(4, 0x10)                          // LOOP
        h.out(0, 0x5A)
        #expect(h.inb(5) & 0x01 == 0x01)
        #expect(h.inb(0) == 0x5A)
        #expect(h.inb(5) & 0x01 == 0)
        h.out(4, 0x10 | 0x01)                   // DTR -> DSR
        #expect(h.inb(6) & 0xF0 == 0x20)
        h.out(4, 0x10 | 0x02)                   // RTS -> CTS
        #expect(h.inb(6) & 0xF0 == 0x10)
        h.out(4, 0x10 | 0x04)                   // OUT1 -> RI
        #expect(h.inb(6) & 0xF0 == 0x40)
        h.out(4, 0x10 | 0x08)                   // OUT2 -> DCD; RI fell: TERI delta
        let msr = h.inb(6)
        #expect(msr & 0xF0 == 0x80)
        #expect(msr & 0x04 == 0x04)
        #expect(h.inb(6) & 0x0F == 0)           // deltas clear on read
        h.out(4, 0)
        #expect(h.output().isEmpty)
    }
}

@Suite("Console monitor")
struct ConsoleMonitorTests {
    /// Linux 6.1's panic() from `echo c > /proc/sysrq-trigger`, as the console showed it on the
    /// real-KVM bed (shortened): the panic line, then the stack, which ends in the registers of
    /// the system call it came from, then the panic's last line.
    static let sysrqPanic = """
        [   10.697559] Kernel panic - not syncing: sysrq triggered crash
        [   10.710225] CPU: 0 PID: 84 Comm: sh Not tainted 6.1.0-56-cloud-amd64 #1  Debian 6.1.192-2
        [   10.722451] Call Trace:
        [   10.727984]  <TASK>
        [   10.732963]  dump_stack_lvl+0x44/0x5c
        [   10.741717]  panic+0x118/0x2f4
        [   10.750505]  ? _printk+0x68/0x83
        [   10.756693]  sysrq_handle_crash+0x16/0x20
        [   10.765289]  __handle_sysrq.cold+0x44/0x11c
        [   10.903316]  entry_SYSCALL_64_after_hwframe+0x6e/0xd8
        [   10.911262] RIP: 0033:0x47b7a0
        [   10.944086] RSP: 002b:00007fffef64c328 EFLAGS: 00000202 ORIG_RAX: 0000000000000001
        [   11.016405]  </TASK>
        [   11.023032] Kernel Offset: 0x9000000 from 0xffffffff81000000
        [   11.040231] ---[ end Kernel panic - not syncing: sysrq triggered crash ]---

        """

    @Test("a panic decides the run at its first line; its stack trace after it is kept, the user-space RIP inside it is not a new oops")
    func panicTrace() throws {
        let stop = StopController()
        let monitor = try ConsoleMonitor(expect: [], failOn: [], detectPanic: true, stop: stop, timeline: nil)
        let devNull = open("/dev/null", O_WRONLY)
        defer { close(devNull) }
        let console = Console(fd: devNull, monitor: monitor)
        let lines = Self.sysrqPanic.split(separator: "\n").map { Array(($0 + "\n").utf8) }
        // Up to the stack: decided, not stopped.
        for line in lines.prefix(5) { line.withUnsafeBytes { console.write($0) } }
        #expect(stop.outcome == nil && !stop.isStopping)
        for line in lines.dropFirst(5) { line.withUnsafeBytes { console.write($0) } }
        #expect(stop.outcome == .kernelPanic(line: "[   10.697559] Kernel panic - not syncing: sysrq triggered crash"))
        let frames = try #require(monitor.oops).frames
        #expect(frames == ["dump_stack_lvl+0x44/0x5c", "panic+0x118/0x2f4", "? _printk+0x68/0x83", "sysrq_handle_crash+0x16/0x20",
                           "__handle_sysrq.cold+0x44/0x11c", "entry_SYSCALL_64_after_hwframe+0x6e/0xd8"])
        #expect(monitor.oops?.ripLine == nil)
    }

    @Test("a decided panic wins over whatever stops the run during its grace time")
    func decidedOutcomeWins() {
        let stop = StopController()
        stop.decide(.kernelPanic(line: "panic"), stoppingWithin: 60)
        #expect(!stop.isStopping)
        stop.stop(.reboot)
        #expect(stop.outcome == .kernelPanic(line: "panic"))
        let timed = StopController()
        timed.decide(.kernelPanic(line: "cut short"), stoppingWithin: 0.05)
        #expect(timed.wait(timeout: 60) == .kernelPanic(line: "cut short"))
    }
}
