// Hypercalls: the page at guest-physical 0x2000 a guest calls into (HypercallPage), the calls
// and their numbers (Hypercall), and what swiftvmm does for each (HypercallHandler).

import X86Platform

/// The hypercall page: one guest page at guest-physical 0x2000, filled by swiftvmm with a
/// 32-byte stub per hypercall number, as Xen lays its page out. A guest calls
/// `hypercall_page + nr * 32` with arguments in rdi, rsi, rdx, rcx, r8 and finds the result
/// in rax.
///
/// Xen's stubs execute `vmcall`. A KVM user-space VMM cannot: KVM handles `vmcall` in the
/// kernel and it never reaches us (and on the PVM hosts we develop on it never even exits).
/// So each stub does port I/O instead:
///
///     b8 nn nn nn nn     mov  $nr, %eax
///     e7 e0              out  %eax, $0xe0      <- KVM_EXIT_IO; swiftvmm reads the registers,
///     c3                 ret                      runs the handler and puts the result in rax
///     cc ...             int3 padding to 32 bytes
///
/// The stub clobbers only rax (and flags). The page sits in a read-only memory slot, so a
/// guest cannot overwrite it; swiftvmm reserves it in any memory map it hands a guest.
///
/// The last slot (127) is not a stub but an info block a guest can use to detect swiftvmm:
/// the 8 bytes "SWIFTVMM", the u32 ABI version, and the u32 number of stub slots (127).
public enum HypercallPage {
    public static let address = BootLayout.hypercallPage
    public static let size = 4096
    public static let slotSize = 32
    /// Slots 0...126 hold stubs; slot 127 holds the info block.
    public static let stubCount = 127
    public static let infoOffset = stubCount * slotSize
    public static let magic: [UInt8] = Array("SWIFTVMM".utf8)
    /// The port the stubs write the hypercall number to (32-bit `out`).
    public static let port: UInt16 = 0xE0

    /// Guest-physical address of the stub for `number`.
    public static func stubAddress(_ number: UInt32) -> UInt64 {
        address + UInt64(number) * UInt64(slotSize)
    }

    /// The page's contents.
    public static func build(abiVersion: UInt32) -> [UInt8] {
        var page = [UInt8](repeating: 0xCC, count: size)
        for nr in 0..<stubCount {
            let n = UInt32(nr)
            let stub: [UInt8] = [
                0xB8, UInt8(n & 0xFF), UInt8((n >> 8) & 0xFF), UInt8((n >> 16) & 0xFF), UInt8(n >> 24),
                0xE7, UInt8(port),
                0xC3,
            ]
            page.replaceSubrange(nr * slotSize ..< nr * slotSize + stub.count, with: stub)
        }
        var info = magic
        info += withUnsafeBytes(of: abiVersion.littleEndian, Array.init)
        info += withUnsafeBytes(of: UInt32(stubCount).littleEndian, Array.init)
        info += [UInt8](repeating: 0, count: slotSize - info.count)
        page.replaceSubrange(infoOffset ..< infoOffset + slotSize, with: info)
        return page
    }
}
