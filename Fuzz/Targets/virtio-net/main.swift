// virtio-net through the PCI transport: transmit chains of any shape (the network checks each
// frame's pieces are guest RAM and its length a frame's), and frames of any length arriving
// into receive buffers of any shape, with and without MRG_RXBUF.

import Devices
import FuzzSupport

let memory = VirtioDriver.makeMemory()

@main enum Target { static func main() { runLibFuzzer(fuzz) } }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    VirtioDriver.clear(memory)
    let network = InMemoryNetwork(memory: memory)
    let driver = try! VirtioDriver(device: VirtioNet(backend: network, mac: nil, trace: []), memory: memory)
    driver.run(&input) { input in
        // A frame arrives: any length up to past the largest, one byte value repeated (the
        // length matters to the device, the contents do not).
        let length = Int(input.integer(UInt32.self) % UInt32(VirtioNet.maxFrame + 64))
        network.queue([UInt8](repeating: input.byte(), count: length))
    }
    return 0
}
