internal import CHost
import Glibc

extension HostThread {
    /// Join the thread if it ends before `deadline` (monotonicNanoseconds); false if it did
    /// not, and then it is left running (it goes when the process does).
    public func join(until deadline: UInt64) -> Bool {
        // pthread_timedjoin_np takes a CLOCK_REALTIME instant.
        let left = deadline > monotonicNanoseconds() ? deadline - monotonicNanoseconds() : 0
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let total = UInt64(now.tv_nsec) + left % 1_000_000_000
        let seconds = now.tv_sec + Int(left / 1_000_000_000) + Int(total / 1_000_000_000)
        return sys_join_until(handle, seconds, Int(total % 1_000_000_000)) == 0
    }
}
