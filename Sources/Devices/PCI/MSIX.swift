import KVM
import Synchronization

/// The MSI-X table and pending-bit array of one function (PCI spec 6.8.2), as plain state.
///
/// Each entry is 16 bytes: message address low, high, data, vector control (bit 0: masked).
/// Entries start masked. The guest accesses them with aligned 4- or 8-byte reads and writes.
public struct MSIXTable: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var addressLow: UInt32 = 0
        public var addressHigh: UInt32 = 0
        public var data: UInt32 = 0
        public var control: UInt32 = 1
        public var masked: Bool { control & 1 != 0 }
        public init(addressLow: UInt32 = 0, addressHigh: UInt32 = 0, data: UInt32 = 0, control: UInt32 = 1) {
            self.addressLow = addressLow
            self.addressHigh = addressHigh
            self.data = data
            self.control = control
        }
    }
    public static let entrySize = 16
    public private(set) var entries: [Entry]
    public private(set) var pending: [Bool]
    /// Message control bits 15 (MSI-X enable) and 14 (function mask).
    public var enabled = false
    public var functionMasked = false

    public init(vectors: Int) {
        entries = Array(repeating: Entry(), count: vectors)
        pending = Array(repeating: false, count: vectors)
    }

    public var count: Int { entries.count }

    /// Whether a message for `vector` would be delivered now (enabled, nothing masked).
    public func deliverable(_ vector: Int) -> Bool {
        enabled && !functionMasked && vector < entries.count && !entries[vector].masked
    }

    public func readTable(offset: UInt64, size: Int) -> UInt64 {
        guard size == 4 || size == 8, offset % UInt64(size) == 0 else { return ~0 }
        var value: UInt64 = 0
        for i in 0..<(size / 4) {
            value |= UInt64(dword(at: offset + UInt64(4 * i))) << (32 * UInt64(i))
        }
        return value
    }

    private func dword(at offset: UInt64) -> UInt32 {
        let v = Int(offset / 16)
        guard v < entries.count else { return 0 }
        let e = entries[v]
        switch offset % 16 {
        case 0: return e.addressLow
        case 4: return e.addressHigh
        case 8: return e.data
        default: return e.control
        }
    }

    /// Apply a table write. Returns the vectors whose entry changed.
    public mutating func writeTable(offset: UInt64, size: Int, value: UInt64) -> [Int] {
        guard size == 4 || size == 8, offset % UInt64(size) == 0 else { return [] }
        var changed: [Int] = []
        for i in 0..<(size / 4) {
            let off = offset + UInt64(4 * i)
            let v = Int(off / 16)
            guard v < entries.count else { continue }
            let word = UInt32(truncatingIfNeeded: value >> (32 * UInt64(i)))
            let before = entries[v]
            switch off % 16 {
            case 0: entries[v].addressLow = word & ~3       // DWORD-aligned addresses only
            case 4: entries[v].addressHigh = word
            case 8: entries[v].data = word
            default: entries[v].control = word & 1
            }
            if entries[v] != before && !changed.contains(v) { changed.append(v) }
        }
        return changed
    }

    /// The PBA: bit n set while vector n has a message held back by a mask.
    public func readPBA(offset: UInt64, size: Int) -> UInt64 {
        var value: UInt64 = 0
        for bit in 0..<(size * 8) {
            let v = Int(offset) * 8 + bit
            if v < pending.count && pending[v] { value |= 1 << UInt64(bit) }
        }
        return value
    }

    public mutating func setPending(_ vector: Int, _ on: Bool) {
        if vector < pending.count { pending[vector] = on }
    }

    /// The MSI-X capability (ID 0x11): message control (table size - 1; enable and function
    /// mask start clear), table and PBA offsets with their BAR indicator in the low 3 bits.
    public static func capability(vectors: Int, bar: Int, tableOffset: UInt32, pbaOffset: UInt32) -> [UInt8] {
        let control = UInt16(vectors - 1)
        let table = tableOffset | UInt32(bar), pba = pbaOffset | UInt32(bar)
        return [0x11, 0, UInt8(control & 0xFF), UInt8(control >> 8)]
            + (0..<4).map { UInt8(truncatingIfNeeded: table >> (8 * $0)) }
            + (0..<4).map { UInt8(truncatingIfNeeded: pba >> (8 * $0)) }
    }
    public static let controlEnable: UInt16 = 1 << 15
    public static let controlFunctionMask: UInt16 = 1 << 14
}

/// The VM's GSI routing table as swiftvmm manages it: the PC defaults plus one MSI route per
/// MSI-X vector in use. Devices get a block of GSIs above the IOAPIC's 24 at start.
public final class InterruptRouter: @unchecked Sendable {
    public let vm: VirtualMachine
    private struct State {
        var nextGSI: UInt32 = 24
        var msiRoutes: [UInt32: GSIRoute] = [:]
    }
    private let state = Mutex(State())

    public init(vm: VirtualMachine) { self.vm = vm }

    public func allocateGSIs(_ count: Int) -> UInt32 {
        state.withLock { s in
            let first = s.nextGSI
            s.nextGSI += UInt32(count)
            return first
        }
    }

    /// Route `gsi` to an MSI message, or remove its route (nil). Rewrites the whole table.
    public func route(_ gsi: UInt32, to message: MSIXTable.Entry?) throws(KVMError) {
        try state.withLock { s throws(KVMError) in
            let route = message.map { GSIRoute.msi(gsi: gsi, addressLow: $0.addressLow, addressHigh: $0.addressHigh, data: $0.data) }
            if s.msiRoutes[gsi] == route { return }
            s.msiRoutes[gsi] = route
            try vm.setGSIRouting(GSIRoute.pcDefaults + s.msiRoutes.keys.sorted().map { s.msiRoutes[$0]! })
        }
    }
}

/// Level-triggered INTx lines shared by PCI functions: a GSI stays asserted while any of its
/// functions asserts it (wired-OR, as on a real board).
public final class SharedINTx: @unchecked Sendable {
    public let vm: VirtualMachine
    private let counts = Mutex<[UInt32: Int]>([:])
    public init(vm: VirtualMachine) { self.vm = vm }

    /// Whether `gsi` is asserted now (for tests and reports).
    public func isAsserted(_ gsi: UInt32) -> Bool { counts.withLock { $0[gsi, default: 0] > 0 } }

    public func change(_ gsi: UInt32, asserted: Bool) {
        counts.withLock { c in
            let before = c[gsi, default: 0]
            let after = max(0, before + (asserted ? 1 : -1))
            c[gsi] = after
            if (before > 0) != (after > 0) { vm.setIRQLine(gsi, level: after > 0) }
        }
    }
}
