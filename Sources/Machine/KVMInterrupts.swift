import Devices
import KVM
import Synchronization

/// The devices' interrupt sink and doorbell registrar, over KVM: lines are KVM_IRQ_LINE on
/// the in-kernel PIC/IOAPIC; message vectors are irqfds on GSIs above the IOAPIC's 24, each
/// routed to its MSI message with KVM_SET_GSI_ROUTING; doorbells are ioeventfds.
public final class KVMInterrupts: InterruptSink, DoorbellRegistrar {
    public let vm: VirtualMachine
    private struct Routing {
        var nextGSI: UInt32 = 24
        var msiRoutes: [UInt32: GSIRoute] = [:]
    }
    private let routing = Mutex(Routing())

    public init(vm: VirtualMachine) { self.vm = vm }

    public func setLine(_ line: UInt32, high: Bool) { vm.setIRQLine(line, level: high) }

    public func messageVectors(count: Int) throws(WiringError) -> MessageVectors {
        let first = routing.withLock { r in
            defer { r.nextGSI += UInt32(count) }
            return r.nextGSI
        }
        let vectors = MessageVectors(first: first, count: count)
        do {
            for (i, event) in vectors.events.enumerated() { try vm.assignIRQFD(event.fd, gsi: first + UInt32(i)) }
        } catch {
            throw WiringError(error.description)
        }
        return vectors
    }

    /// Route the vector's GSI to `message`, or remove its route. KVM takes the routing table
    /// only whole, so the table is rewritten (vectors change only while a driver sets up).
    public func program(_ vectors: MessageVectors, _ index: Int, _ message: MSIMessage?) throws(WiringError) {
        let gsi = vectors.first + UInt32(index)
        do {
            try routing.withLock { r throws(KVMError) in
                let route = message.map { GSIRoute.msi(gsi: gsi, addressLow: $0.addressLow, addressHigh: $0.addressHigh, data: $0.data) }
                if r.msiRoutes[gsi] == route { return }
                r.msiRoutes[gsi] = route
                try vm.setGSIRouting(GSIRoute.pcDefaults + r.msiRoutes.keys.sorted().map { r.msiRoutes[$0]! })
            }
        } catch {
            throw WiringError(error.description)
        }
    }

    public func attach(_ event: EventFD, address: UInt64, width: UInt32) throws(WiringError) {
        do {
            try vm.addIOEventFD(event.fd, address: address, length: width)
        } catch {
            throw WiringError(error.description)
        }
    }

    public func detach(_ event: EventFD, address: UInt64, width: UInt32) {
        try? vm.removeIOEventFD(event.fd, address: address, length: width)
    }
}
