// The split-virtqueue walker over guest memory the input fills: descriptor tables (direct and
// indirect), avail ring and indices of any value, with the device's side of the protocol
// (pop, push, unpop, notification suppression) in an order the input picks. Checked: every
// buffer a chain yields is inside guest RAM (and not read-only if device-writable), a chain
// with no fault has every buffer, readable buffers come first, the pieces the chain hands out
// stay inside its buffers, and the used ring says what was pushed.

import Devices
import FuzzSupport
import Memory

/// 64 KiB of RAM; the input's bytes become the descriptor table and avail ring at `ring`, and
/// the rest of RAM holds a pattern, so buffers anywhere have something to gather.
let ramSize: UInt64 = 0x1_0000
let readOnly: Range<UInt64> = 0x0800 ..< 0x1000
let ring: UInt64 = 0x1000
let memory = try! GuestMemory(size: ramSize, readOnlyRanges: [readOnly])

@main enum Target { static func main() { runLibFuzzer(fuzz) } }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let shape = input.byte()
    let queueSize = UInt16(1) << (shape % 10)                 // 1 ... 512
    let eventIndex = shape & 0x10 != 0
    let placement = input.byte()
    let operations = input.take(16)
    let n = UInt64(queueSize)
    // The rings where a driver puts them (desc, then avail right after, used apart), or
    // anywhere, sometimes misaligned or outside RAM.
    let desc = placement & 1 == 0 ? ring : UInt64(input.integer(UInt32.self) % UInt32(ramSize + 0x100))
    let avail = placement & 2 == 0 ? ring + 16 * n : UInt64(input.integer(UInt32.self) % UInt32(ramSize + 0x100))
    let used = placement & 4 == 0 ? 0x8000 : UInt64(input.integer(UInt32.self) % UInt32(ramSize + 0x100))

    try! memory.fill(0xA5, at: 0, count: ramSize)
    let image = input.rest()
    let copied = min(image.count, Int(ramSize - ring))
    try! memory.write(Array(image.prefix(copied)), at: ring)
    if placement & 4 == 0 { try! memory.fill(0, at: used, count: 6 + 8 * n) }

    var q = Virtqueue(index: 0, memory: memory)
    do throws(VirtqueueError) {
        try q.activate(size: queueSize, descriptors: desc, driverArea: avail, deviceArea: used, eventIndex: eventIndex)
    } catch {
        fuzzCheck(!q.isActive, "activate failed (\(error)) but the queue is active")
        return 0
    }
    fuzzCheck(memory.contains(desc, count: 16 * n) && memory.contains(avail, count: 6 + 2 * n)
              && memory.contains(used, count: 6 + 8 * n), "rings outside RAM accepted")

    var chain = DescriptorChain()
    var popped = 0
    var op = 0
    while popped < 4 * Int(queueSize) + 4 {
        let control = operations.isEmpty ? 0 : operations[op % operations.count]
        op += 1
        let lastAvail = q.lastAvail
        let available = q.availableCount
        let got: Bool
        do throws(VirtqueueError) {
            got = try q.pop(into: &chain)
        } catch {
            // A broken ring: the transport resets the queue and asks the driver for a reset.
            fuzzCheck(error.needsReset, "pop threw a per-request fault: \(error)")
            break
        }
        guard got else {
            fuzzCheck(available == 0, "pop found nothing with \(available) available")
            break
        }
        popped += 1
        fuzzCheck(q.lastAvail == lastAvail &+ 1, "pop moved lastAvail from \(lastAvail) to \(q.lastAvail)")
        check(chain, queueSize: queueSize, control: control)
        switch control & 3 {
        case 0:
            q.unpop(1)                                      // given back: the next pop sees it again
            fuzzCheck(q.lastAvail == lastAvail, "unpop did not give the chain back")
            if control & 4 != 0 { break }
            _ = try? q.pop(into: &chain)
            q.push(head: chain.head, written: 0)
        default:
            let usedBefore = memory.load(UInt16.self, at: used + 2)!
            let written = UInt32(truncatingIfNeeded: chain.writableLength)
            q.push(head: chain.head, written: written)
            let usedAfter = memory.load(UInt16.self, at: used + 2)!
            // The used index is the device's count when the ring started zeroed where nothing
            // else lies over it.
            fuzzCheck(usedAfter == usedBefore &+ 1 || placement & 4 != 0 || usedRingOverlapped(used, n, desc, avail),
                      "used idx went from \(usedBefore) to \(usedAfter) on one push")
        }
        if control & 8 != 0 { _ = q.needsInterrupt() }
        if control & 16 != 0 { _ = q.enableNotifications() }
    }
    return 0
}

/// A driver may lay its rings over each other; the used index is then whatever the last write was.
func usedRingOverlapped(_ used: UInt64, _ n: UInt64, _ desc: UInt64, _ avail: UInt64) -> Bool {
    let u = used ..< used + 6 + 8 * n
    return u.overlaps(desc ..< desc + 16 * n) || u.overlaps(avail ..< avail + 6 + 2 * n)
}

func check(_ chain: DescriptorChain, queueSize: UInt16, control: UInt8) {
    fuzzCheck(chain.head < queueSize, "chain head \(chain.head) in a queue of \(queueSize)")
    fuzzCheck(chain.segments.count <= Int(queueSize) + Int(Virtqueue.maxIndirectEntries),
              "a chain of \(chain.segments.count) buffers")
    var seenWritable = false
    var readable: UInt64 = 0, writable: UInt64 = 0
    for s in chain.segments {
        fuzzCheck(!(seenWritable && !s.deviceWritable), "readable buffer after a writable one")
        seenWritable = seenWritable || s.deviceWritable
        if s.deviceWritable { writable += UInt64(s.length) } else { readable += UInt64(s.length) }
        if let p = s.pointer {
            fuzzCheck(memory.pointer(s.address, count: UInt64(s.length)) == p, "buffer at \(s.address) has the wrong host pointer")
            fuzzCheck(isGuestRAM(memory, p, Int(s.length)), "buffer at \(s.address)+\(s.length) is not inside guest RAM")
            if s.deviceWritable {
                fuzzCheck(!(s.address ..< s.address + UInt64(s.length)).overlaps(readOnly) || s.length == 0,
                          "device-writable buffer at \(s.address)+\(s.length) overlaps read-only memory")
            }
        } else {
            fuzzCheck(chain.fault != nil, "buffer at \(s.address) has no host pointer and the chain no fault")
        }
    }
    fuzzCheck(readable == chain.readableLength && writable == chain.writableLength, "chain lengths do not add up")

    // The pieces of a window of either stream stay inside that stream's buffers.
    let streamLength = control & 32 != 0 ? writable : readable
    let from = streamLength == 0 ? 0 : UInt64(control) * 7 % (streamLength + 1)
    let count = min(streamLength - from, 4096)
    var total: UInt64 = 0
    let complete = chain.forEachPiece(writable: control & 32 != 0, from: from, count: count) { p, n in
        fuzzCheck(n > 0 && isGuestRAM(memory, p, n), "a piece of \(n) bytes is not inside guest RAM")
        total += UInt64(n)
        return true
    }
    fuzzCheck(!complete || total == count, "forEachPiece gave \(total) of \(count) bytes and said it was complete")
    fuzzCheck(complete || chain.fault != nil, "forEachPiece stopped short on a chain without a fault")
    if complete && control & 32 == 0 && count > 0 {
        var buffer = [UInt8](repeating: 0, count: Int(count))
        let gathered = buffer.withUnsafeMutableBytes { chain.gather(from: from, into: $0.baseAddress!, count: Int(count)) }
        fuzzCheck(gathered, "gather failed where forEachPiece succeeded")
    }
}
