// Leaving the VM's teardown to a helper process.
//
// When a VMM process exits, the kernel tears its address space down in the exit path of the
// process's last thread, and with a KVM VM registered on that address space the teardown
// waits for SRCU grace periods (the mmu notifier release, then the VM itself: irqchip, PIT):
// 10-25 ms on these hosts, during which the process cannot be reaped, so whoever waits for
// swiftvmm waits for that too. The helper below shares the address space (CLONE_VM, but not
// a thread of ours), holds only the VM's and vCPUs' file descriptors, and waits for us to
// exit; the last user of the address space and of the VM is then the helper, and the
// teardown runs in its exit, after our exit status has been delivered.
#ifndef SWIFTVMM_CTEARDOWN_SHIM_H
#define SWIFTVMM_CTEARDOWN_SHIM_H
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
extern int clone(int (*fn)(void *), void *stack, int flags, void *arg, ...);
extern int pipe2(int pipefd[2], int flags);
#ifndef CLONE_VM
#define CLONE_VM 0x00000100   // <sched.h> defines it only under _GNU_SOURCE
#endif

// The helper shares our memory and even our thread pointer, so it makes only raw system
// calls: no errno, no glibc state.
static inline long sys_raw_syscall3(long nr, long a, long b, long c) {
#if defined(__x86_64__)
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "0"(nr), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return ret;
#else
    return syscall(nr, a, b, c);
#endif
}

struct sys_teardown_helper_args {
    int parent_alive;      // read end of a pipe whose write end only the VMM holds
    int keep_count;
    int keep[65];          // sorted: the VM and vCPU fds and parent_alive
};

static inline void sys_close_from_to(unsigned lo, unsigned hi) {
    if (lo > hi) return;
    if (sys_raw_syscall3(SYS_close_range, lo, hi, 0) == 0) return;
    for (unsigned fd = lo; fd <= hi && fd < 4096; fd++) sys_raw_syscall3(SYS_close, fd, 0, 0);
}

static int sys_teardown_helper(void *raw) {
    struct sys_teardown_helper_args *a = (struct sys_teardown_helper_args *)raw;
    // Let go at once of everything but the VM and the pipe: the terminal, pipes a caller
    // reads to EOF, disk images, taps. `keep` is sorted and ends with the pipe.
    unsigned next = 0;
    for (int i = 0; i < a->keep_count; i++) {
        if ((unsigned)a->keep[i] > next) sys_close_from_to(next, (unsigned)a->keep[i] - 1);
        next = (unsigned)a->keep[i] + 1;
    }
    sys_close_from_to(next, ~0U);
    // Until read() sees end-of-file (or fails for any reason but a signal): we are gone.
    char byte;
    long got;
    while ((got = sys_raw_syscall3(SYS_read, a->parent_alive, (long)&byte, 1)) > 0 || got == -EINTR) {}
    sys_raw_syscall3(SYS_exit, 0, 0, 0);
    return 0;
}

/// Start the helper that will hold `keep` (the VM and vCPU fds, at most 64) until
/// this process has exited, and then tear the VM down. Returns its pid or -errno; on
/// failure nothing has changed and the process tears the VM down itself as usual.
static inline int sys_start_teardown_helper(const int *keep, int count) {
    if (count < 0 || count > 64) return -EINVAL;
    enum { stack_size = 64 * 1024 };
    // Its arguments live at the base of its stack mapping, never freed: we are exiting.
    char *region = (char *)mmap(NULL, stack_size, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED) return -errno;
    struct sys_teardown_helper_args *a = (struct sys_teardown_helper_args *)region;
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) { int e = errno; munmap(region, stack_size); return -e; }
    // The fds to keep, sorted, with the pipe's read end among them.
    a->parent_alive = pipefd[0];
    a->keep_count = 0;
    for (int i = 0; i < count; i++) if (keep[i] >= 0) a->keep[a->keep_count++] = keep[i];
    a->keep[a->keep_count++] = pipefd[0];
    for (int i = 1; i < a->keep_count; i++)
        for (int j = i; j > 0 && a->keep[j - 1] > a->keep[j]; j--) {
            int t = a->keep[j]; a->keep[j] = a->keep[j - 1]; a->keep[j - 1] = t;
        }
    int pid = clone(sys_teardown_helper, region + stack_size, CLONE_VM | SIGCHLD, a);
    int e = errno;
    close(pipefd[0]);   // pipefd[1] stays open until we exit: that is the helper's signal
    if (pid < 0) { close(pipefd[1]); munmap(region, stack_size); return -e; }
    return pid;
}
#endif
