// virtio-blk request parsing: requests of every type (read, write, flush, get-id, discard,
// write-zeroes, unknown) through the PCI transport, against an in-memory disk that may be
// read-only, unable to discard, or failing. The disk checks that every operation the device
// passes on lies inside it.

import Devices
import FuzzSupport
import Glibc
import Memory

let memory = VirtioDriver.makeMemory()

@main enum Target { static func main() { runLibFuzzer(fuzz) } }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    VirtioDriver.clear(memory)
    let disk = input.byte()
    var faults = InMemoryDisk.Faults()
    // Two bits each, so most runs have a working disk.
    if disk & 0x03 == 0x03 { faults.read = EIO }
    if disk & 0x0C == 0x0C { faults.write = ENOSPC }
    if disk & 0x30 == 0x30 { faults.flush = EIO }
    if disk & 0xC0 == 0xC0 { faults.discard = EOPNOTSUPP }
    let shape = input.byte()
    let backend = InMemoryDisk(sectors: 1 + Int(shape & 0x3F), readOnly: shape & 0x40 != 0, canDiscard: shape & 0x80 == 0,
                               faults: faults)
    let driver = try! VirtioDriver(device: VirtioBlock(backend: backend, index: 0, trace: []), memory: memory)
    driver.run(&input)
    return 0
}
