import HostSupport
import X86Platform

/// Finding a kernel's virtual base from its own code, for ELF images whose program headers
/// give no usable physical addresses (0, or the kernel-space virtual addresses again).
///
/// lguest's launcher met this with old 32-bit kernels and answered it with statistics rather
/// than a disassembler: kernel code is full of `movl <absolute address>, %eax` (opcode 0xA1
/// followed by a 32-bit address), and those addresses are kernel virtual addresses, so their
/// top byte is PAGE_OFFSET's. Tally the byte four after every 0xA1; the first value seen more
/// than three times wins. Random bytes that happen to be 0xA1 scatter their votes; real
/// instructions agree.
///
/// 64-bit kernels are built with `-mcmodel=kernel`: their code lives in the top 2 GiB and
/// names its own addresses as sign-extended 32-bit immediates (`mov $imm32, %r64`, REX.W C7 /0)
/// and as 64-bit immediates (`movabs`, REX.W B8+r). Their 1 GiB-aligned bases are tallied and
/// the dominant one, if it really dominates, is the virtual base (0xffffffff80000000,
/// __START_KERNEL_map, for every x86-64 Linux).
///
/// Either way the answer is checked against the image before it is used: every segment must
/// sit at or above it and land in a sane physical place. When the vote is thin or the answer
/// does not fit, it is an error, never a guess.
public enum PageOffset {
    public struct Result: Sendable, Equatable {
        public let pageOffset: UInt64
        /// How it was found, for `inspect`: "movl-eax", "sign-extended-imm32/movabs".
        public let method: String
        /// Votes for the winner, and all votes cast.
        public let votes: Int
        public let totalVotes: Int
    }

    public enum Failure: Error, CustomStringConvertible, Sendable, Equatable {
        case noEvidence(method: String)
        case ambiguous(method: String, best: UInt64, votes: Int, total: Int)
        case inconsistent(pageOffset: UInt64, reason: String)

        public var description: String {
            switch self {
            case .noEvidence(let m):
                return "the page offset cannot be determined from the image (no \(m) evidence in its code)"
            case .ambiguous(let m, let best, let votes, let total):
                return "the page offset cannot be determined from the image (\(m): best candidate \(Diagnostics.hex(best)) has only \(votes) of \(total) votes)"
            case .inconsistent(let offset, let reason):
                return "the page offset the image suggests (\(Diagnostics.hex(offset))) does not fit it: \(reason)"
            }
        }
    }

    /// Whether the program headers' physical addresses cannot be used as they are.
    public static func physicalAddressesUnusable(_ image: ELFImage) -> Bool {
        let kernelSpace: UInt64 = image.elfClass == .elf32 ? 0x8000_0000 : 1 << 63
        return image.segments.allSatisfy { $0.physicalAddress == 0 }
            || image.segments.allSatisfy { $0.physicalAddress == $0.virtualAddress && $0.virtualAddress >= kernelSpace }
    }

    /// The page offset of `image`, checked against its segments.
    public static func intuit(image: ELFImage, bytes: [UInt8]) throws(Failure) -> Result {
        // The code: executable segments' file bytes (all segments if none is marked).
        let executable = image.segments.filter { $0.flags & 1 != 0 }
        let code = (executable.isEmpty ? image.segments : executable).compactMap { s -> ArraySlice<UInt8>? in
            let start = Int(s.fileOffset), end = start + Int(s.fileSize)
            return end <= bytes.count ? bytes[start ..< end] : nil
        }
        let result = image.elfClass == .elf32 ? try intuit32(code) : try intuit64(code)
        try check(result.pageOffset, image: image)
        return result
    }

    /// lguest's vote over `movl <addr>, %eax`: the top byte of PAGE_OFFSET.
    public static func intuit32(_ code: [ArraySlice<UInt8>]) throws(Failure) -> Result {
        var tally = [Int](repeating: 0, count: 256)
        var total = 0
        for chunk in code {
            var i = chunk.startIndex
            while i + 4 < chunk.endIndex {
                if chunk[i] == 0xA1 {
                    let top = Int(chunk[i + 4])
                    tally[top] += 1
                    total += 1
                    // Seen more than three times. A top byte of 0 is a user (or null)
                    // address, never the kernel's base: it does not win.
                    if tally[top] > 3 && top != 0 {
                        return Result(pageOffset: UInt64(top) << 24, method: "movl-eax", votes: tally[top], totalVotes: total)
                    }
                }
                i += 1
            }
        }
        if total == 0 { throw .noEvidence(method: "movl <addr>,%eax") }
        let best = (1..<256).max { tally[$0] < tally[$1] } ?? 0
        throw .ambiguous(method: "movl <addr>,%eax", best: UInt64(best) << 24, votes: tally[best], total: total)
    }

    /// The 64-bit counterpart: absolute kernel-half addresses named by the code.
    public static func intuit64(_ code: [ArraySlice<UInt8>]) throws(Failure) -> Result {
        var tally: [UInt64: Int] = [:]
        var total = 0
        let gib: UInt64 = 1 << 30
        func vote(_ address: UInt64) {
            guard address >> 63 == 1 else { return }        // kernel half only
            tally[address & ~(gib - 1), default: 0] += 1
            total += 1
        }
        for chunk in code {
            var i = chunk.startIndex
            while i + 2 < chunk.endIndex {
                let rex = chunk[i]
                if rex & 0xF8 == 0x48 {                          // REX.W (B may be set)
                    let op = chunk[i + 1]
                    if op == 0xC7, chunk[i + 2] & 0xF8 == 0xC0, i + 7 <= chunk.endIndex {
                        // mov $imm32, %r64: ModRM mod=11 reg=0; the immediate is sign-extended.
                        var v: UInt32 = 0
                        for k in 0..<4 { v |= UInt32(chunk[i + 3 + k]) << (8 * UInt32(k)) }
                        vote(UInt64(bitPattern: Int64(Int32(bitPattern: v))))
                    } else if op & 0xF8 == 0xB8, i + 10 <= chunk.endIndex {
                        // movabs $imm64, %r64
                        var v: UInt64 = 0
                        for k in 0..<8 { v |= UInt64(chunk[i + 2 + k]) << (8 * UInt64(k)) }
                        vote(v)
                    }
                }
                i += 1
            }
        }
        let method = "sign-extended imm32 and movabs"
        guard let (best, votes) = tally.max(by: { $0.value < $1.value }) else { throw .noEvidence(method: method) }
        // A real kernel gives thousands of votes, overwhelmingly for one base.
        guard votes >= 64, votes * 2 > total else {
            throw .ambiguous(method: method, best: best, votes: votes, total: total)
        }
        // Kernel text sits in the top 2 GiB: if the winner is a 1 GiB base inside it, the
        // kernel's base is the start of those 2 GiB (__START_KERNEL_map) when that still
        // covers every address voted for; report the 2 GiB base then.
        let twoGiBBase = best & ~(2 * gib - 1)
        let base = best >= 0xFFFF_FFFF_8000_0000 ? twoGiBBase : best
        return Result(pageOffset: base, method: method, votes: votes, totalVotes: total)
    }

    /// The answer must place the kernel's segments (those at or above it; x86-64's per-CPU
    /// segment sits at virtual 0 and keeps its own physical address) in a sane physical
    /// place, and agree with the program headers where those are usable.
    static func check(_ offset: UInt64, image: ELFImage) throws(Failure) {
        let usable = !physicalAddressesUnusable(image)
        var covered = 0
        for (i, s) in image.segments.enumerated() where s.virtualAddress >= offset {
            let physical = s.virtualAddress - offset
            guard physical >= BootLayout.kernelStart, physical < 1 << 32 else {
                throw .inconsistent(pageOffset: offset, reason: "segment \(i) would be at physical \(Diagnostics.hex(physical))")
            }
            if usable && physical != s.physicalAddress {
                throw .inconsistent(pageOffset: offset, reason: "segment \(i) would be at physical \(Diagnostics.hex(physical)), its header says \(Diagnostics.hex(s.physicalAddress))")
            }
            covered += 1
        }
        guard covered > 0 else {
            throw .inconsistent(pageOffset: offset, reason: "every segment lies below it")
        }
    }

    /// Where each segment goes when the page offset converts virtual to physical: segments
    /// below the offset keep a physical address of their own if they have a usable one.
    public static func placement(_ image: ELFImage, pageOffset: UInt64) throws(Failure) -> [UInt64] {
        var result: [UInt64] = []
        for (i, s) in image.segments.enumerated() {
            if s.virtualAddress >= pageOffset {
                result.append(s.virtualAddress - pageOffset)
            } else if s.physicalAddress != 0 && s.physicalAddress != s.virtualAddress {
                result.append(s.physicalAddress)
            } else {
                throw .inconsistent(pageOffset: pageOffset, reason: "segment \(i) at virtual \(Diagnostics.hex(s.virtualAddress)) lies below it and has no physical address")
            }
        }
        return result
    }
}
