import Devices
import Foundation
import Glibc
import Testing

/// virtio-net's receive path on a real tap (created by the device, so this needs root): a frame
/// sent out of the host side of the tap arrives in the guest's buffers, spread over several of
/// them with MRG_RXBUF, with num_buffers saying how many.
@Suite("virtio-net on a real tap")
struct VirtioNetTapTests {
    static let buffers: UInt64 = 0x40000, bufferSize: UInt32 = 64, ethertype: UInt16 = 0x88B5

    /// Send one raw Ethernet frame out of interface `name` (AF_PACKET; Glibc does not import
    /// sockaddr_ll, so it is laid out by hand: family, protocol, ifindex, hatype, pkttype, halen, addr).
    func send(_ frame: [UInt8], on name: String) throws {
        let s = socket(AF_PACKET, Int32(SOCK_RAW.rawValue), Int32(UInt16(3).bigEndian))   // ETH_P_ALL
        try #require(s >= 0, "AF_PACKET socket: \(String(cString: strerror(errno))) (needs root)")
        defer { close(s) }
        var address = [UInt8](repeating: 0, count: 20)
        address[0] = UInt8(AF_PACKET); address[1] = 0
        withUnsafeBytes(of: Int32(if_nametoindex(name))) { for i in 0..<4 { address[4 + i] = $0[i] } }
        address[11] = 6
        let sent = address.withUnsafeBytes { a in
            frame.withUnsafeBytes { f in
                sendto(s, f.baseAddress, f.count, 0, a.baseAddress!.assumingMemoryBound(to: sockaddr.self), 20)
            }
        }
        #expect(sent == frame.count, "sendto: \(String(cString: strerror(errno)))")
    }

    @Test("MRG_RXBUF: a 150-byte frame fills three 64-byte buffers, num_buffers = 3")
    func mergeableReceive() throws {
        let name = "svmt\(getpid() % 100000)"
        let net: VirtioNet
        do {
            net = try VirtioNet(tapName: name, mac: [0x52, 0x54, 0, 0xAB, 0xCD, 0xEF], trace: [])
        } catch {
            Issue.record("\(error) (this test creates a tap: it needs root)")
            return
        }
        // Quiet the host side (no IPv6 chatter into our buffers); best effort.
        try? "1".write(toFile: "/proc/sys/net/ipv6/conf/\(name)/disable_ipv6", atomically: false, encoding: .utf8)
        let h = try VirtioHarness(net, queueSize: 32)
        h.start(features: Virtio.featureVersion1 | VirtioNet.featureMAC | VirtioNet.featureMergeableRX)
        #expect(h.read(VirtioPCI.deviceOffset, 4) == 0xAB00_5452 && h.read(VirtioPCI.deviceOffset + 4, 2) == 0xEFCD)
        for i in 0..<32 {
            try h.ring.setDescriptor(i, address: Self.buffers + UInt64(i) * UInt64(Self.bufferSize), length: Self.bufferSize, flags: 2)
            try h.ring.post(UInt16(i))
        }
        let payload = (0..<136).map { UInt8($0) }
        let frame = net.mac + [0x02, 0, 0, 0, 0, 1] + [UInt8(Self.ethertype >> 8), UInt8(Self.ethertype & 0xFF)] + payload
        try send(frame, on: name)
        h.transport.processNow(0)

        // Walk the used ring frame by frame (num_buffers in each frame's first buffer).
        var i = 0
        var found = false
        while i < Int(h.ring.usedIdx) {
            let first = h.ring.usedElement(i)
            let base = Self.buffers + UInt64(first.id) * UInt64(Self.bufferSize)
            let count = Int(h.memory.load(UInt16.self, at: base + 10)!)
            #expect(count >= 1)
            let type = h.memory.bytes(at: base + 24, count: 2)
            if type == [UInt8(Self.ethertype >> 8), UInt8(Self.ethertype & 0xFF)] {
                found = true
                #expect(count == 3)
                var received: [UInt8] = []
                for k in 0..<count {
                    let e = h.ring.usedElement(i + k)
                    received += h.memory.bytes(at: Self.buffers + UInt64(e.id) * UInt64(Self.bufferSize), count: Int(e.length))
                }
                #expect(received.count == 12 + frame.count)
                #expect(Array(received.dropFirst(12)) == frame)
            }
            i += max(count, 1)
        }
        #expect(found, "the frame did not arrive; used idx \(h.ring.usedIdx)")
        #expect(net.framesReceived.load(ordering: .relaxed) >= 1)
        #expect(net.counters.guestErrors.load(ordering: .relaxed) == 0)
    }

    @Test("without MRG_RXBUF a frame larger than the guest's buffer is dropped and counted, the buffer kept")
    func tooSmallWithoutMergeable() throws {
        let name = "svmu\(getpid() % 100000)"
        let net: VirtioNet
        do {
            net = try VirtioNet(tapName: name, mac: nil, trace: [])
        } catch {
            Issue.record("\(error) (this test creates a tap: it needs root)")
            return
        }
        try? "1".write(toFile: "/proc/sys/net/ipv6/conf/\(name)/disable_ipv6", atomically: false, encoding: .utf8)
        let h = try VirtioHarness(net, queueSize: 8)
        h.start(features: Virtio.featureVersion1 | VirtioNet.featureMAC)
        try h.ring.setDescriptor(0, address: Self.buffers, length: Self.bufferSize, flags: 2)
        try h.ring.post(0)
        let frame = net.mac + [0x02, 0, 0, 0, 0, 1] + [UInt8(Self.ethertype >> 8), UInt8(Self.ethertype & 0xFF)]
            + [UInt8](repeating: 0xAA, count: 136)
        try send(frame, on: name)
        h.transport.processNow(0)
        #expect(net.framesDropped.load(ordering: .relaxed) >= 1)
        #expect(net.counters.guestErrors.load(ordering: .relaxed) >= 1)
        #expect(h.ring.usedIdx == 0)                              // the buffer is still the guest's to fill
        #expect(h.transport.queueHasAvailable(0))
    }
}
