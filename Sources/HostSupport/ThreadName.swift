internal import CHost

/// Name a thread for `ps -L` and debuggers (glibc keeps pthread_setname_np behind _GNU_SOURCE).
func setThreadName(_ thread: UInt, _ name: String) {
    _ = sys_set_thread_name(thread, name)
}
