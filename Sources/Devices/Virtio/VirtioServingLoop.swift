import Glibc
import HostSupport

/// The device thread of one virtio function: it sleeps in poll(2) on the stop request, the
/// queues' kick events and the model's host fd (a tap), and serves what woke it.
///
/// Work per wake-up is bounded (`Virtio.chainsPerTurn` chains per queue): a queue left with
/// work is served again on the next turn after a poll that does not sleep, so a stop request
/// and the other queues are looked at between turns however fast the guest posts.
extension VirtioPCI {
    /// Serve the device until `stopFD` becomes readable.
    public func start(stopFD: Int32) -> HostThread {
        if let requests = device.interruptRequests {
            return HostThread.start(name: String(device.name.prefix(15))) { [self] in relay(stopFD: stopFD, requests) }
        }
        return HostThread.start(name: String(device.name.prefix(15))) { [self] in serve(stopFD: stopFD) }
    }

    /// The device thread of a device whose queues another process serves (vhost-user): it
    /// turns that process's interrupt requests into interrupts (which honour the driver's
    /// MSI-X masks and INTx state, as an irqfd straight to KVM would not while a vector is
    /// masked) and watches the model's host fd, the connection, for the process going away.
    private func relay(stopFD: Int32, _ requests: [EventFD]) {
        var fds = [pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)]
        for r in requests { fds.append(pollfd(fd: r.fd, events: Int16(POLLIN), revents: 0)) }
        let hostSlot = fds.count
        fds.append(pollfd(fd: -1, events: 0, revents: 0))
        while true {
            let events = serving.withLock { s in device.hostEvents(s.queues) }
            fds[hostSlot].events = events
            fds[hostSlot].fd = events != 0 ? device.hostFD : -1
            let r = poll(&fds, nfds_t(fds.count), -1)
            if r < 0 { if errno == EINTR { continue }; return }
            if fds[0].revents != 0 { return }
            for q in requests.indices where fds[1 + q].revents != 0 {
                requests[q].drain()
                link.interruptQueue(q)
            }
            let hostReady = fds[hostSlot].revents
            if hostReady != 0 { serving.withLock { s in _ = device.handleHostEvent(hostReady, &s.queues) } }
        }
    }

    private func serve(stopFD: Int32) {
        var fds = [pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)]
        for kick in kicks { fds.append(pollfd(fd: kick.fd, events: Int16(POLLIN), revents: 0)) }
        let hostSlot = fds.count
        fds.append(pollfd(fd: -1, events: 0, revents: 0))
        // Queues (and the host fd) whose last turn ended with work left.
        var left = [Bool](repeating: false, count: kicks.count)
        var hostLeft = false
        while true {
            // The model's wish to hear from its host fd is its state: ask under the lock.
            let events = serving.withLock { s in s.active && link.common.withLock { $0.isRunning } ? device.hostEvents(s.queues) : 0 }
            fds[hostSlot].events = events
            fds[hostSlot].fd = events != 0 ? device.hostFD : -1
            let busy = hostLeft || left.contains(true)
            let r = poll(&fds, nfds_t(fds.count), busy ? 0 : -1)
            if r < 0 { if errno == EINTR { continue }; return }
            if fds[0].revents != 0 { return }
            serving.withLock { s in
                let running = s.active && link.common.withLock { $0.isRunning }
                for q in kicks.indices {
                    let kicked = fds[1 + q].revents != 0
                    if kicked { kicks[q].drain() }
                    guard kicked || left[q] else { continue }
                    left[q] = running && s.queues.rings[q].isActive ? device.serve(q, &s.queues) : false
                }
                let hostReady = fds[hostSlot].revents
                hostLeft = running && (hostReady != 0 || hostLeft) ? device.handleHostEvent(hostReady, &s.queues) : false
            }
        }
    }

    /// Give the model's host fd one turn now, on the calling thread, if the model wants to hear
    /// from it and it is ready within `timeout` milliseconds (tests without a device thread
    /// drive host input this way). Returns whether the model was called.
    @discardableResult
    public func processHostNow(timeout: Int32 = 0) -> Bool {
        let events = serving.withLock { s in s.active && link.common.withLock { $0.isRunning } ? device.hostEvents(s.queues) : 0 }
        guard events != 0 else { return false }
        var p = pollfd(fd: device.hostFD, events: events, revents: 0)
        guard poll(&p, 1, timeout) == 1 else { return false }
        return serving.withLock { s in
            guard s.active && link.common.withLock({ $0.isRunning }) else { return false }
            _ = device.handleHostEvent(p.revents, &s.queues)
            return true
        }
    }

    /// Serve queue `index` now, on the calling thread, until it has nothing left (tests
    /// without a device thread drive devices this way).
    public func processNow(_ index: Int) {
        serving.withLock { s in
            guard s.active && link.common.withLock({ $0.isRunning }) else { return }
            while s.queues.rings[index].isActive && device.serve(index, &s.queues) {}
        }
    }
}
