// lguest's page-offset heuristic and its 64-bit counterpart: the votes over code bytes, and
// the check and placement against an image's segments. The input builds an ELF (class,
// segment addresses, flags) whose code is the rest of the input repeated, so votes can add
// up to what a real kernel casts. Checked: a winner is a plausible base (the top byte for
// 32-bit, a 1 GiB-aligned kernel-half address for 64-bit) with the votes the rules demand,
// and an accepted page offset places every segment above it at a sane physical address.

import FuzzSupport
import KernelLoading
import X86Platform

@main enum Target { static func main() { runLibFuzzer(fuzz) } }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let shape = input.byte()
    let elf64 = shape & 1 != 0
    let repeats = Int(input.byte() % 64) + 1
    let segmentCount = Int(shape >> 1) % 3 + 1
    var segments: [ELFWriter.Segment] = []
    for _ in 0..<segmentCount {
        let kind = input.byte()
        let virtualAddress: UInt64 = elf64 ? 0xFFFF_FFFF_8000_0000 | UInt64(input.integer(UInt32.self) & 0x7FFF_F000)
                                           : 0xC000_0000 | UInt64(input.integer(UInt32.self) & 0x3FFF_F000)
        let anyVirtual = input.integer(UInt64.self)
        let physical: UInt64 = switch kind % 4 {
        case 0: 0
        case 1: kind & 0x10 != 0 ? virtualAddress : anyVirtual
        case 2: UInt64(input.integer(UInt32.self))
        default: virtualAddress &- (elf64 ? 0xFFFF_FFFF_8000_0000 : 0xC000_0000)
        }
        segments.append(ELFWriter.Segment(flags: UInt32(kind >> 4) & 7, virtualAddress: kind & 0x80 != 0 ? anyVirtual : virtualAddress,
                                          physicalAddress: physical, contents: [], memorySize: 0x1000))
    }
    let code = input.rest()
    let copies = min(repeats, (64 << 10) / max(code.count, 1) + 1)
    var body: [UInt8] = []
    for _ in 0..<copies { body += code }
    segments[0].contents = body
    segments[0].memorySize = max(UInt64(body.count), 1)
    let entry = segments[0].virtualAddress
    let bytes = ELFWriter.image(elf64: elf64, entry: entry, segments: segments)

    // The votes alone.
    if let r = try? PageOffset.intuit32([body[...]]) {
        fuzzCheck(r.pageOffset & 0xFF_FFFF == 0 && r.pageOffset != 0 && r.pageOffset < 1 << 32, "32-bit page offset \(r.pageOffset)")
        fuzzCheck(r.votes > 3 && r.votes <= r.totalVotes, "32-bit vote \(r.votes) of \(r.totalVotes)")
    }
    if let r = try? PageOffset.intuit64([body[...]]) {
        fuzzCheck(r.pageOffset >> 63 == 1 && r.pageOffset & ((1 << 30) - 1) == 0, "64-bit page offset \(r.pageOffset)")
        fuzzCheck(r.votes >= 64 && r.votes * 2 > r.totalVotes, "64-bit vote \(r.votes) of \(r.totalVotes)")
    }

    // Against an image.
    guard let image = try? ELFImage(bytes: bytes, path: "fuzz") else { return 0 }
    _ = PageOffset.physicalAddressesUnusable(image)
    guard let found = try? PageOffset.intuit(image: image, bytes: bytes) else { return 0 }
    var above = 0
    for s in image.segments where s.virtualAddress >= found.pageOffset {
        let physical = s.virtualAddress - found.pageOffset
        fuzzCheck(physical >= BootLayout.kernelStart && physical < 1 << 32, "segment placed at physical \(physical)")
        above += 1
    }
    fuzzCheck(above > 0, "a page offset above every segment was accepted")
    if let placement = try? PageOffset.placement(image, pageOffset: found.pageOffset) {
        fuzzCheck(placement.count == image.segments.count, "placement of \(placement.count) for \(image.segments.count) segments")
    }
    return 0
}
