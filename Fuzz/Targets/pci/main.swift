// PCI configuration mechanism #1 and the BARs behind the MMIO window: a bus with the host
// bridge and two virtio functions (virtio-rng, virtio-blk), driven by register sequences of
// any port, width and value: address latch, config data at every byte offset, BAR sizing and
// moves, memory decoding on and off, MSI-X enable and mask, BAR 0 accesses through the window
// and through the PCI-configuration-access capability. Checked: read-only identity registers
// stay put, a BAR probe reads back its size, the latch keeps only its defined bits, every
// doorbell attached is a queue's notify address in a BAR that decodes, and the MSI-X table
// reads back what a valid write stored.

import Devices
import FuzzSupport
import Memory
import X86Platform

let memory = VirtioDriver.makeMemory()
let addressPort: UInt64 = 0, dataPort: UInt64 = 4

@main enum Target { static func main() { runLibFuzzer(fuzz) } }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let wiring = InMemoryWiring()
    let bus = PCIBus(window: BootLayout.pciHole)
    let disk = InMemoryDisk(sectors: 8, readOnly: false, canDiscard: true, faults: .init())
    let functions = [
        try! VirtioPCI(device: VirtioRNG(trace: []), memory: memory, interrupts: wiring,
                       intx: SharedLines(sink: wiring), intxLine: 10, doorbells: wiring),
        try! VirtioPCI(device: VirtioBlock(backend: disk, index: 0, trace: []), memory: memory, interrupts: wiring,
                       intx: SharedLines(sink: wiring), intxLine: 11, doorbells: wiring),
    ]
    let slots = functions.map { try! bus.add($0) }
    let identity = functions.map { $0.config.get32(0) }
    let ports = bus.configPorts!, window = bus.window!

    func select(_ slot: Int, _ register: UInt8) {
        ports.write(offset: addressPort, size: 4, value: UInt64(0x8000_0000 | UInt32(slot) << 11 | UInt32(register & 0xFC)))
    }

    var steps = 0
    while !input.isEmpty && steps < 256 {
        steps += 1
        let slot = Int(input.byte()) % 4                            // 0: the bridge, 3: empty
        switch input.byte() % 8 {
        case 0:
            // The latch: any value; it keeps enable, bus, device, function and register.
            let value = input.integer(UInt32.self)
            ports.write(offset: addressPort, size: 4, value: UInt64(value))
            let back = UInt32(truncatingIfNeeded: ports.read(offset: addressPort, size: 4))
            fuzzCheck(back == value & 0x80FF_FFFC, "address latch: wrote \(value), read \(back)")
        case 1:
            // Config data at any byte of the data port, any width.
            select(slot, input.byte())
            let offset = dataPort + UInt64(input.byte() % 4), width = input.pick([1, 2, 4])
            if input.bool() { ports.write(offset: offset, size: width, value: UInt64(input.integer(UInt32.self))) }
            else { _ = ports.read(offset: offset, size: width) }
        case 2:
            // Byte and word accesses to 0xCF8-0xCFB are not the latch.
            let offset = UInt64(input.byte() % 4), width = input.pick([1, 2])
            if input.bool() { ports.write(offset: offset, size: width, value: UInt64(input.integer(UInt32.self))) }
            else { fuzzCheck(ports.read(offset: offset, size: width) == ~0, "a narrow read of the latch is not all-ones") }
        case 3:
            // A BAR probe: all-ones reads back the size mask (32-bit memory BAR, type bits 0).
            let bar = UInt8(0x10 + 4 * Int(input.byte() % 6))
            select(slot, bar)
            let saved = ports.read(offset: dataPort, size: 4)
            ports.write(offset: dataPort, size: 4, value: 0xFFFF_FFFF)
            let probe = UInt32(truncatingIfNeeded: ports.read(offset: dataPort, size: 4))
            if slots.contains(slot), bar == 0x10 {
                fuzzCheck(probe == ~(VirtioPCI.barSize - 1), "BAR 0 probe read \(probe)")
            } else if slot < 3 {
                fuzzCheck(probe == 0, "unimplemented BAR \(bar) of slot \(slot) probes as \(probe)")
            }
            ports.write(offset: dataPort, size: 4, value: saved)
        case 4:
            // Memory decoding, INTx disable and the rest of the command register.
            select(slot, 0x04)
            ports.write(offset: dataPort, size: 2, value: UInt64(input.integer(UInt16.self)))
        case 5:
            // MSI-X message control (enable, function mask) of a function.
            select(slot, 0x40)
            ports.write(offset: dataPort + 2, size: 2, value: UInt64(input.integer(UInt16.self)))
        case 6:
            // The MMIO window: mostly where BARs are, any offset sometimes.
            let hole = BootLayout.pciHole
            let base = slots.firstIndex(of: slot).flatMap { functions[$0].decodedBAR(0) }
                .flatMap { hole.contains($0) ? $0 - hole.lowerBound : nil }
            let offset = base.map { $0 + UInt64(input.integer(UInt16.self) % 0x4000) }
                ?? UInt64(input.integer(UInt32.self)) % UInt64(hole.count)
            let width = input.pick([1, 2, 4, 8])
            if input.bool() { window.write(offset: offset, size: width, value: input.integer(UInt64.self)) }
            else { _ = window.read(offset: offset, size: width) }
        default:
            // A BAR moved anywhere in 32 bits.
            select(slot, 0x10)
            ports.write(offset: dataPort, size: 4, value: UInt64(input.integer(UInt32.self)))
        }

        for (i, f) in functions.enumerated() {
            fuzzCheck(f.config.get32(0) == identity[i], "slot \(slots[i]): vendor/device ID changed")
        }
        // Doorbells: only at notify addresses of BARs that decode, never at two places for one.
        var expected = Set<UInt64>()
        for f in functions {
            if let base = f.decodedBAR(0) {
                for q in 0..<f.device.queueCount { expected.insert(base + VirtioPCI.notifyOffset + UInt64(q) * UInt64(VirtioPCI.notifyMultiplier)) }
            }
        }
        let attached = wiring.doorbellAddresses
        fuzzCheck(attached.isSubset(of: expected), "doorbells at \(attached.subtracting(expected).sorted()) where no BAR decodes")
    }
    return 0
}
