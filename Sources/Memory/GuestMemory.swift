// Memory: guest RAM. Sizes as users write them (MemorySize), and the mapping itself
// (GuestMemory): a memory file mapped once, split into the regions the PC layout asks for,
// and the bounds checks every access on the guest's behalf goes through.

internal import CHost
import Glibc

/// A stretch of guest-physical address space backed by RAM. Unchecked Sendable: a pointer
/// into the mapping `GuestMemory` owns.
public struct GuestRegion: @unchecked Sendable {
    public let guestAddress: UInt64
    public let size: UInt64
    /// Where it lives in the VMM's address space.
    public let host: UnsafeMutableRawPointer
    /// Where it lives in the memory file (`GuestMemory.fd`), for a process that maps it too.
    public let fileOffset: UInt64

    public var guestEnd: UInt64 { guestAddress + size }
}

public enum GuestMemoryError: Error, CustomStringConvertible, Sendable {
    case exceedsHost(requested: UInt64, host: UInt64)
    case mapFailed(bytes: UInt64, errno: Int32)
    case memoryFile(bytes: UInt64, errno: Int32)
    case outOfBounds(address: UInt64, length: UInt64)

    public var description: String {
        switch self {
        case .exceedsHost(let r, let h):
            return "guest memory of \(MemorySize.format(r)) is more than this host has (\(MemorySize.format(h)))"
        case .mapFailed(let b, let e):
            return "cannot map \(MemorySize.format(b)) of guest memory: \(String(cString: strerror(e)))"
        case .memoryFile(let b, let e):
            return "cannot make a \(MemorySize.format(b)) memory file for guest RAM: \(String(cString: strerror(e)))"
        case .outOfBounds(let a, let l):
            return "guest-physical range 0x\(String(a, radix: 16))+\(l) is not inside guest RAM"
        }
    }
}

/// Guest RAM: one shared mapping of a memory file (memfd), seen by the guest as one or two
/// regions. A file rather than anonymous memory so that another process (a vhost-user device
/// backend) can map the very same pages: `fd` and each region's `fileOffset` are what it needs.
///
/// The PC keeps the top of the 32-bit address space for devices (PCI BARs, the IOAPIC and
/// LAPIC at 0xFEC00000/0xFEE00000), so RAM beyond `lowMemoryLimit` is placed above 4 GiB,
/// as firmware on real machines does.
///
/// Every access by the VMM on behalf of the guest goes through `pointer(_:count:)` or
/// `writablePointer(_:count:)`, which check the whole range against the regions (and, for
/// writes, against the ranges the guest must not change, like the hypercall page). A guest
/// cannot make the VMM touch host memory outside its RAM. Unchecked Sendable: it is a pointer
/// wrapper, and the mapping lives as long as the object.
public final class GuestMemory: @unchecked Sendable {
    public static let lowMemoryLimit: UInt64 = 0xC000_0000
    public static let highMemoryStart: UInt64 = 0x1_0000_0000

    public let size: UInt64
    public let regions: [GuestRegion]
    /// Guest-physical ranges that are RAM but read-only to the guest (and to device DMA).
    public let readOnlyRanges: [Range<UInt64>]
    private let mapping: UnsafeMutableRawPointer
    private let mappingSize: Int
    /// The memory file behind the mapping (close-on-exec; pass it on explicitly).
    public let fd: Int32

    public init(size: UInt64, readOnlyRanges: [Range<UInt64>] = []) throws(GuestMemoryError) {
        let pageSize = UInt64(sysconf(Int32(_SC_PAGESIZE)))
        let hostBytes = UInt64(sysconf(Int32(_SC_PHYS_PAGES))) * pageSize
        guard size <= hostBytes else { throw .exceedsHost(requested: size, host: hostBytes) }
        // Pages are only allocated when first touched, as with anonymous memory. Nothing is
        // reserved up front: a host that runs out of memory later fails the guest then (the
        // OOM killer), which only a full pre-fault could rule out, at the cost of the memory
        // a small guest never uses. The size check above stops the obvious mistakes.
        let fd = sys_memfd_create("swiftvmm-guest-ram")
        guard fd >= 0 else { throw .memoryFile(bytes: size, errno: errno) }
        guard ftruncate(fd, off_t(size)) == 0 else {
            let e = errno
            close(fd)
            throw .memoryFile(bytes: size, errno: e)
        }
        guard let p = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            let e = errno
            close(fd)
            throw .mapFailed(bytes: size, errno: e)
        }
        self.fd = fd
        self.size = size
        self.mapping = p
        self.mappingSize = Int(size)
        self.readOnlyRanges = readOnlyRanges
        let low = min(size, Self.lowMemoryLimit)
        var regions = [GuestRegion(guestAddress: 0, size: low, host: p, fileOffset: 0)]
        if size > low {
            regions.append(GuestRegion(guestAddress: Self.highMemoryStart, size: size - low, host: p + Int(low), fileOffset: low))
        }
        self.regions = regions
    }

    deinit {
        munmap(mapping, mappingSize)
        close(fd)
    }

    /// The end of RAM below 4 GiB.
    public var lowMemoryEnd: UInt64 { regions[0].guestEnd }

    /// A host pointer to `count` bytes at guest-physical `address`, or nil unless the whole
    /// range is RAM in one region. `count` may be 0 (an empty buffer at a valid address).
    @inline(__always)
    public func pointer(_ address: UInt64, count: UInt64) -> UnsafeMutableRawPointer? {
        for region in regions {
            // Written to avoid overflow: address - base and size - offset never wrap here.
            if address >= region.guestAddress && address - region.guestAddress <= region.size {
                let offset = address - region.guestAddress
                guard count <= region.size - offset else { return nil }
                return region.host + Int(offset)
            }
        }
        return nil
    }

    /// Like `pointer`, but also nil if any byte of the range is read-only to the guest.
    @inline(__always)
    public func writablePointer(_ address: UInt64, count: UInt64) -> UnsafeMutableRawPointer? {
        guard let p = pointer(address, count: count) else { return nil }
        for ro in readOnlyRanges where count > 0 && address < ro.upperBound && ro.lowerBound < address + count {
            return nil
        }
        return p
    }

    /// Whether the whole range is guest RAM.
    public func contains(_ address: UInt64, count: UInt64) -> Bool {
        pointer(address, count: count) != nil
    }

    // MARK: Typed helpers for the VMM's own set-up code (loaders, boot structures).

    /// Copy bytes into guest memory, ignoring read-only protection (the VMM itself fills the
    /// hypercall page and boot data).
    public func write(_ bytes: UnsafeRawBufferPointer, at address: UInt64) throws(GuestMemoryError) {
        guard let p = pointer(address, count: UInt64(bytes.count)) else {
            throw .outOfBounds(address: address, length: UInt64(bytes.count))
        }
        if let base = bytes.baseAddress { p.copyMemory(from: base, byteCount: bytes.count) }
    }

    public func write(_ bytes: [UInt8], at address: UInt64) throws(GuestMemoryError) {
        guard let p = pointer(address, count: UInt64(bytes.count)) else {
            throw .outOfBounds(address: address, length: UInt64(bytes.count))
        }
        bytes.withUnsafeBytes { b in if let base = b.baseAddress { p.copyMemory(from: base, byteCount: b.count) } }
    }

    public func store<T: FixedWidthInteger>(_ value: T, at address: UInt64) throws(GuestMemoryError) {
        guard let p = pointer(address, count: UInt64(MemoryLayout<T>.size)) else {
            throw .outOfBounds(address: address, length: UInt64(MemoryLayout<T>.size))
        }
        p.storeBytes(of: value.littleEndian, as: T.self)
    }

    public func load<T: FixedWidthInteger>(_ type: T.Type = T.self, at address: UInt64) -> T? {
        guard let p = pointer(address, count: UInt64(MemoryLayout<T>.size)) else { return nil }
        return T(littleEndian: p.loadUnaligned(as: T.self))
    }

    public func fill(_ byte: UInt8, at address: UInt64, count: UInt64) throws(GuestMemoryError) {
        guard let p = pointer(address, count: count) else { throw .outOfBounds(address: address, length: count) }
        memset(p, Int32(byte), Int(count))
    }

    /// Up to `count` bytes at `address` (fewer at the end of a region), for reports.
    public func bytes(at address: UInt64, count: Int) -> [UInt8] {
        var n = UInt64(count)
        while n > 0 {
            if let p = pointer(address, count: n) {
                return Array(UnsafeRawBufferPointer(start: p, count: Int(n)))
            }
            n -= 1
        }
        return []
    }
}
