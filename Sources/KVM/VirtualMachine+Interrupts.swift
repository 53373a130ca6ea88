import CKVM
import Glibc

/// One entry of the VM's GSI routing table (`KVM_SET_GSI_ROUTING`).
public enum GSIRoute: Equatable, Sendable {
    /// GSI → a pin of an in-kernel interrupt controller (chip 0/1: the PICs, 2: the IOAPIC).
    case irqchip(gsi: UInt32, chip: UInt32, pin: UInt32)
    /// GSI → an MSI message (what an MSI-X table entry holds).
    case msi(gsi: UInt32, addressLow: UInt32, addressHigh: UInt32, data: UInt32)

    public var gsi: UInt32 {
        switch self {
        case .irqchip(let gsi, _, _), .msi(let gsi, _, _, _): return gsi
        }
    }

    /// The routes KVM installs by itself with KVM_CREATE_IRQCHIP: GSIs 0–15 to both the PIC
    /// pair and the IOAPIC, 16–23 to the IOAPIC. KVM_SET_GSI_ROUTING replaces the whole table,
    /// so every table swiftvmm installs starts with these.
    public static let pcDefaults: [GSIRoute] = {
        var routes: [GSIRoute] = []
        for irq: UInt32 in 0..<24 {
            if irq < 16 && irq != 2 {
                routes.append(.irqchip(gsi: irq, chip: irq < 8 ? 0 : 1, pin: irq % 8))
            }
            routes.append(.irqchip(gsi: irq, chip: 2, pin: irq))
        }
        return routes
    }()
}

extension VirtualMachine {
    /// Make a guest write of `length` bytes to `address` (MMIO, or a port with `pio`) signal
    /// `eventFD` inside KVM, without an exit to user space. `datamatch`: only writes of that value.
    public func addIOEventFD(_ eventFD: Int32, address: UInt64, length: UInt32, pio: Bool = false,
                             datamatch: UInt64? = nil) throws(KVMError) {
        try ioeventfd(eventFD, address: address, length: length, pio: pio, datamatch: datamatch, assign: true)
    }

    public func removeIOEventFD(_ eventFD: Int32, address: UInt64, length: UInt32, pio: Bool = false,
                                datamatch: UInt64? = nil) throws(KVMError) {
        try ioeventfd(eventFD, address: address, length: length, pio: pio, datamatch: datamatch, assign: false)
    }

    private func ioeventfd(_ eventFD: Int32, address: UInt64, length: UInt32, pio: Bool, datamatch: UInt64?,
                           assign: Bool) throws(KVMError) {
        var e = kvm_ioeventfd()
        e.addr = address
        e.len = length
        e.fd = eventFD
        e.datamatch = datamatch ?? 0
        var flags: UInt32 = 0
        if datamatch != nil { flags |= UInt32(1 << kvm_ioeventfd_flag_nr_datamatch) }
        if pio { flags |= UInt32(1 << kvm_ioeventfd_flag_nr_pio) }
        if !assign { flags |= UInt32(1 << kvm_ioeventfd_flag_nr_deassign) }
        e.flags = flags
        guard skvm_ioctl_ptr(fd, SKVM_IOEVENTFD, &e) == 0 else {
            throw .ioctl("KVM_IOEVENTFD (\(assign ? "assign" : "deassign") \(pio ? "port" : "MMIO") 0x\(String(address, radix: 16)))",
                         errno: errno)
        }
    }

    /// Make a write to `eventFD` raise GSI `gsi` inside KVM (through the routing table).
    public func assignIRQFD(_ eventFD: Int32, gsi: UInt32) throws(KVMError) {
        var r = kvm_irqfd()
        r.fd = UInt32(bitPattern: eventFD)
        r.gsi = gsi
        guard skvm_ioctl_ptr(fd, SKVM_IRQFD, &r) == 0 else {
            throw .ioctl("KVM_IRQFD (GSI \(gsi))", errno: errno)
        }
    }

    public func removeIRQFD(_ eventFD: Int32, gsi: UInt32) throws(KVMError) {
        var r = kvm_irqfd()
        r.fd = UInt32(bitPattern: eventFD)
        r.gsi = gsi
        r.flags = UInt32(KVM_IRQFD_FLAG_DEASSIGN)
        guard skvm_ioctl_ptr(fd, SKVM_IRQFD, &r) == 0 else {
            throw .ioctl("KVM_IRQFD deassign (GSI \(gsi))", errno: errno)
        }
    }

    /// Replace the VM's whole GSI routing table.
    public func setGSIRouting(_ routes: [GSIRoute]) throws(KVMError) {
        let n = UInt32(routes.count)
        let bytes = Int(skvm_routing_size(n))
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
        defer { raw.deallocate() }
        memset(raw, 0, bytes)
        let table = raw.bindMemory(to: kvm_irq_routing.self, capacity: 1)
        table.pointee.nr = n
        let entries = skvm_routing_entries(table)!
        for (i, route) in routes.enumerated() {
            var e = kvm_irq_routing_entry()
            e.gsi = route.gsi
            switch route {
            case .irqchip(_, let chip, let pin):
                e.type = UInt32(KVM_IRQ_ROUTING_IRQCHIP)
                e.u.irqchip.irqchip = chip
                e.u.irqchip.pin = pin
            case .msi(_, let lo, let hi, let data):
                e.type = UInt32(KVM_IRQ_ROUTING_MSI)
                e.u.msi.address_lo = lo
                e.u.msi.address_hi = hi
                e.u.msi.data = data
            }
            entries[i] = e
        }
        guard skvm_ioctl_ptr(fd, SKVM_SET_GSI_ROUTING, raw) == 0 else {
            throw .ioctl("KVM_SET_GSI_ROUTING (\(n) routes)", errno: errno)
        }
    }
}

/// The in-kernel IOAPIC as KVM holds it, for reports on a guest that seems to wait forever.
public struct IOAPICState: Sendable {
    /// One bit per pin: an edge latched or a level high, not yet delivered.
    public let irr: UInt32
    /// The 24 redirection entries (bits 0-7 vector, 15 trigger mode, 14 remote IRR, 16 mask).
    public let entries: [UInt64]
}

extension VirtualMachine {
    public func ioapicState() -> IOAPICState? {
        var irr: UInt32 = 0
        var entries = [UInt64](repeating: 0, count: 24)
        let ok = entries.withUnsafeMutableBufferPointer { skvm_get_ioapic(fd, &irr, $0.baseAddress) == 0 }
        return ok ? IOAPICState(irr: irr, entries: entries) : nil
    }
}

/// One 8259 of the in-kernel PIC pair.
public struct PICState: Sendable {
    public let lastIRR, irr, imr, isr, elcr, vectorBase: UInt8
    public let autoEOI: Bool
}

extension VirtualMachine {
    /// chip 0: the master (IRQs 0-7), 1: the slave (8-15).
    public func picState(chip: UInt32) -> PICState? {
        var b = [UInt8](repeating: 0, count: 7)
        guard b.withUnsafeMutableBufferPointer({ skvm_get_pic(fd, chip, $0.baseAddress) == 0 }) else { return nil }
        return PICState(lastIRR: b[0], irr: b[1], imr: b[2], isr: b[3], elcr: b[4], vectorBase: b[5], autoEOI: b[6] != 0)
    }
}
