import Devices
import Foundation
import HostSupport
import Hypercalls
import Memory
import RunControl
import Testing

@Suite("Hypercall page and handlers")
struct HypercallTests {
    @Test("the page holds a 32-byte port-I/O stub per number and the info block in slot 127")
    func pageContents() {
        let page = HypercallPage.build(abiVersion: 1)
        #expect(page.count == 4096)
        #expect(HypercallPage.address == 0x2000)
        for nr in [0, 1, 5, 100, 126] {
            let stub = Array(page[nr * 32 ..< nr * 32 + 32])
            // mov $nr, %eax ; out %eax, $0xe0 ; ret ; int3 padding
            #expect(stub[0] == 0xB8)
            #expect(UInt32(stub[1]) | UInt32(stub[2]) << 8 | UInt32(stub[3]) << 16 | UInt32(stub[4]) << 24 == UInt32(nr))
            #expect(Array(stub[5...7]) == [0xE7, 0xE0, 0xC3])
            #expect(stub[8...].allSatisfy { $0 == 0xCC })
        }
        let info = Array(page[4064 ..< 4096])
        #expect(Array(info[0..<8]) == Array("SWIFTVMM".utf8))
        #expect(info[8] == 1 && info[9] == 0 && info[10] == 0 && info[11] == 0)
        #expect(info[12] == 127)
        #expect(HypercallPage.stubAddress(2) == 0x2040)
    }

    @Test("numbers and names are the documented ABI")
    func registry() {
        #expect(Hypercall.noop.rawValue == 0)
        #expect(Hypercall.consoleWrite.rawValue == 1)
        #expect(Hypercall.exit.rawValue == 2)
        #expect(Hypercall.timeNs.rawValue == 3)
        #expect(Hypercall.random.rawValue == 4)
        #expect(Hypercall.version.rawValue == 5)
        #expect(Set(Hypercall.allCases.map(\.name)).count == Hypercall.allCases.count)
    }

    final class Harness {
        let memory: GuestMemory
        let pipe = Pipe()
        let stop = StopController()
        let handler: HypercallHandler
        init() throws {
            memory = try GuestMemory(size: 4 << 20, readOnlyRanges: [0x2000 ..< 0x3000])
            handler = HypercallHandler(memory: memory, console: Console(fd: pipe.fileHandleForWriting.fileDescriptor), stop: stop)
        }
        func call(_ nr: UInt64, _ a0: UInt64 = 0, _ a1: UInt64 = 0) -> Int64 {
            guard case .resume(let v) = handler.dispatch(number: nr, HypercallArguments(a0, a1)) else { return .min }
            return Int64(bitPattern: v)
        }
    }

    @Test("console_write copies guest bytes to the console; bad buffers get EFAULT/EINVAL")
    func consoleWrite() throws {
        let h = try Harness()
        try h.memory.write(Array("hello".utf8), at: 0x10000)
        #expect(h.call(1, 0x10000, 5) == 5)
        #expect(h.call(1, 0x10000, 0) == 0)
        #expect(h.call(1, (4 << 20) - 2, 5) == -14)
        #expect(h.call(1, 0x7FFF_0000_0000, 5) == -14)
        #expect(h.call(1, 0x10000, 2 << 20) == -22)
        try h.pipe.fileHandleForWriting.close()
        #expect(String(decoding: h.pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self) == "hello")
    }

    @Test("random fills the buffer, refuses read-only and out-of-RAM buffers")
    func random() throws {
        let h = try Harness()
        #expect(h.call(4, 0x10000, 64) == 64)
        let a = h.memory.bytes(at: 0x10000, count: 64)
        #expect(h.call(4, 0x10000, 64) == 64)
        let b = h.memory.bytes(at: 0x10000, count: 64)
        #expect(a != b && a.contains { $0 != 0 })
        #expect(h.call(4, 0x2000, 8) == -14)         // the hypercall page is read-only
        #expect(h.call(4, 4 << 20, 1) == -14)
    }

    @Test("version, time, noop, unknown numbers, exit")
    func others() throws {
        let h = try Harness()
        #expect(h.call(5, 0x10000, 64) == 1)
        let text = String(decoding: h.memory.bytes(at: 0x10000, count: 64).prefix { $0 != 0 }, as: UTF8.self)
        #expect(text == "swiftvmm \(SwiftVMMVersion.string)")
        #expect(h.call(5, 0x10000, 4) == 1)
        #expect(h.memory.bytes(at: 0x10000, count: 4) == Array("swi".utf8) + [0])   // truncated, terminated
        #expect(h.call(5) == 1)                                 // no buffer: just the ABI
        let t1 = h.call(3), t2 = h.call(3)
        #expect(t1 > 0 && t2 >= t1)
        #expect(h.call(0) == 0)
        #expect(h.call(7) == -38)
        #expect(h.call(126) == -38)
        #expect(h.call(UInt64(UInt32.max) + 1) == -38)
        #expect(h.handler.dispatch(number: 2, HypercallArguments(0x1FF)) == .stopVCPU)
        #expect(h.stop.outcome == .guestExit(status: 0xFF))
        #expect(h.stop.outcome?.exitCode == 255)
    }
}
