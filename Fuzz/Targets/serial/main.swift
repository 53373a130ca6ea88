// The 16550 UART's registers in any sequence (reads and writes of every port, divisor latch,
// FIFO control, loopback, modem control) mixed with bytes arriving from the host. A shadow
// receive FIFO follows the datasheet's rules as swiftvmm applies them; checked after every
// step: the guest reads the bytes in the order they arrived, none lost or invented, LSR's
// data-ready bit says whether any wait, and the IRQ line is up exactly when IIR says an
// interrupt is pending.

import Devices
import FuzzSupport

@main enum Target { static func main() { runLibFuzzer(fuzz) } }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let wiring = InMemoryWiring()
    let uart = Serial16550(irq: IRQLine(sink: wiring, line: Serial16550.com1IRQ), console: Console(fd: -1, quiet: true))
    // The receive FIFO as the guest should see it, and the registers that decide it.
    var fifo: [UInt8] = []
    var fifoEnabled = false, dlab = false, loopback = false
    var limit: Int { fifoEnabled ? Serial16550.receiveCapacity : 1 }

    var steps = 0
    while !input.isEmpty && steps < 512 {
        steps += 1
        let op = input.byte()
        let port = UInt64(op >> 4) % 9                              // 8: past the registers
        switch op & 3 {
        case 0, 1:
            let value = input.byte()
            uart.write(offset: port, size: 1, value: UInt64(value))
            switch port {
            case 0 where !dlab && loopback:
                if fifo.count < limit { fifo.append(value) }
            case 2:
                if value & 2 != 0 { fifo.removeAll() }
                fifoEnabled = value & 1 != 0
                if fifo.count > limit { fifo.removeFirst(fifo.count - limit) }
            case 3: dlab = value & 0x80 != 0
            case 4: loopback = value & 0x10 != 0
            default: break
            }
        case 2:
            let value = UInt8(truncatingIfNeeded: uart.read(offset: port, size: 1))
            if port == 0 && !dlab {
                let expected = fifo.isEmpty ? 0 : fifo.removeFirst()
                fuzzCheck(value == expected, "RBR read \(value), expected \(expected)")
            }
        default:
            let bytes = input.take(Int(input.byte() % 24))
            let space = limit - fifo.count
            let taken = bytes.withUnsafeBytes { uart.receive($0) }
            fuzzCheck(taken == min(space, bytes.count), "receive took \(taken) of \(bytes.count) with room for \(space)")
            fifo += bytes.prefix(taken)
        }
        let r = uart.registers
        fuzzCheck(uart.receiveSpace == limit - fifo.count, "receive space \(uart.receiveSpace), expected \(limit - fifo.count)")
        fuzzCheck((r.lsr & 1 != 0) == !fifo.isEmpty, "LSR data-ready \(r.lsr & 1) with \(fifo.count) bytes waiting")
        fuzzCheck(r.irq == (r.iir & 1 == 0), "IRQ \(r.irq) with IIR \(r.iir)")
        fuzzCheck(wiring.isHigh(Serial16550.com1IRQ) == r.irq, "IRQ line \(wiring.isHigh(Serial16550.com1IRQ)), device says \(r.irq)")
    }
    return 0
}
