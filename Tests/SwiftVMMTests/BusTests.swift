import Devices
import Testing

@Suite("I/O bus")
struct BusTests {
    final class Recorder: BusDevice, @unchecked Sendable {
        var last: (UInt64, UInt64)?
        override func read(offset: UInt64, size: Int) -> UInt64 { offset }
        override func write(offset: UInt64, size: Int, value: UInt64) { last = (offset, value) }
    }

    @Test("lookups find the device and the offset into its range; edges are exact",
          arguments: [false, true])
    func lookup(portSpace: Bool) throws {
        let bus = IOBus(name: "test", portSpace: portSpace)
        let a = Recorder(name: "a"), b = Recorder(name: "b"), c = Recorder(name: "c")
        try bus.register(b, at: 0x3F8, length: 8)
        try bus.register(a, at: 0x20, length: 2)
        try bus.register(c, at: 0xCF8, length: 8)
        #expect(bus.lookup(0x3F8)?.device === b && bus.lookup(0x3F8)?.offset == 0)
        #expect(bus.lookup(0x3FF)?.offset == 7)
        #expect(bus.lookup(0x400) == nil)
        #expect(bus.lookup(0x3F7) == nil)
        #expect(bus.lookup(0x21)?.device === a)
        #expect(bus.lookup(0xCFF)?.device === c)
        #expect(bus.lookup(0) == nil && bus.lookup(UInt64.max) == nil)
    }

    @Test("overlapping registrations are refused", arguments: [false, true])
    func overlap(portSpace: Bool) throws {
        let bus = IOBus(name: "test", portSpace: portSpace)
        try bus.register(Recorder(name: "first"), at: 0x100, length: 0x10)
        #expect(throws: BusError.self) { try bus.register(Recorder(name: "second"), at: 0x10F, length: 1) }
        #expect(throws: BusError.self) { try bus.register(Recorder(name: "third"), at: 0xF0, length: 0x11) }
        try bus.register(Recorder(name: "fourth"), at: 0x110, length: 1)
        #expect(bus.lookup(0x110)?.device.name == "fourth")
        #expect(bus.lookup(0x10F)?.device.name == "first")
        #expect(bus.lookup(0x111) == nil)
    }
}
