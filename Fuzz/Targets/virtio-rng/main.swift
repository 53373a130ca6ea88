// virtio-rng through the PCI transport: chains of any shape filled from getrandom(2).

import Devices
import FuzzSupport

let memory = VirtioDriver.makeMemory()

@main enum Target { static func main() { runLibFuzzer(fuzz) } }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    VirtioDriver.clear(memory)
    let driver = try! VirtioDriver(device: VirtioRNG(trace: []), memory: memory)
    driver.run(&input)
    return 0
}
