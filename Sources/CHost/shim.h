// The Linux calls swiftvmm makes that Swift's Glibc module does not export: glibc declares
// them only under _GNU_SOURCE (thread names, fallocate), or they live in Linux headers the
// module does not cover (eventfd, getrandom, tap devices), or they are macros Swift cannot
// call. Each is a one-line static inline function or a constant, compiled into its callers.
#ifndef SWIFTVMM_CHOST_SHIM_H
#define SWIFTVMM_CHOST_SHIM_H
#include <sys/eventfd.h>
#include <sys/random.h>

// ---- eventfd, thread names, getrandom -------------------------------------------------------
// Declared here because glibc only declares it under _GNU_SOURCE.
extern int pthread_setname_np(unsigned long thread, const char *name);  // pthread_t is unsigned long in glibc

static inline int sys_eventfd(unsigned int initval, int flags) { return eventfd(initval, flags); }
static const int SYS_EFD_CLOEXEC = EFD_CLOEXEC;
static const int SYS_EFD_NONBLOCK = EFD_NONBLOCK;
static inline int sys_set_thread_name(unsigned long thread, const char *name) {
    return pthread_setname_np(thread, name);
}
// Joining a thread with a deadline (GNU): shutdown must not wait on a thread stuck in a call.
extern int pthread_timedjoin_np(unsigned long thread, void **retval, const struct timespec *abstime);
static inline int sys_join_until(unsigned long thread, long seconds, long nanoseconds) {
    struct timespec t = { seconds, nanoseconds };
    return pthread_timedjoin_np(thread, 0, &t);
}
static inline long sys_getrandom(void *buf, unsigned long len) { return getrandom(buf, len, 0); }

// ---- guest RAM -----------------------------------------------------------------------------
// memfd_create is declared only under _GNU_SOURCE; the raw system call needs nothing.
#include <sys/syscall.h>
#include <linux/memfd.h>
#include <unistd.h>
static inline int sys_memfd_create(const char *name) {
    return (int)syscall(SYS_memfd_create, name, MFD_CLOEXEC);
}

// ---- tap devices ---------------------------------------------------------------------------
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <errno.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <net/if.h>
#include <linux/if_tun.h>
#include <linux/falloc.h>

/// Open /dev/net/tun and attach to (or create) the tap `name` with a vnet header of
/// `vnet_hdr_size` bytes and no offloads. Returns the fd, or -errno; `step` names what failed.
static inline int sys_tap_open(const char *name, int vnet_hdr_size, const char **step) {
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) { *step = "open /dev/net/tun"; return -errno; }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) { int e = errno; close(fd); *step = "TUNSETIFF"; return -e; }
    if (ioctl(fd, TUNSETVNETHDRSZ, &vnet_hdr_size) < 0) { int e = errno; close(fd); *step = "TUNSETVNETHDRSZ"; return -e; }
    if (ioctl(fd, TUNSETOFFLOAD, 0UL) < 0) { int e = errno; close(fd); *step = "TUNSETOFFLOAD"; return -e; }
    return fd;
}

/// Bring interface `name` up if it is down (a tap we just created). Returns 0 or -errno.
static inline int sys_interface_up(const char *name) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    int rc = 0;
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) rc = -errno;
    else if (!(ifr.ifr_flags & IFF_UP)) {
        ifr.ifr_flags |= IFF_UP;
        if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) rc = -errno;
    }
    close(s);
    return rc;
}
static const int SYS_IFNAMSIZ = IFNAMSIZ;

// ---- disk images: discard and write-zeroes as holes -----------------------------------------
// glibc declares fallocate(2) only under _GNU_SOURCE.
extern int fallocate(int fd, int mode, long offset, long len);
static inline int sys_fallocate(int fd, int mode, long offset, long len) { return fallocate(fd, mode, offset, len); }
static const int SYS_FALLOC_FL_KEEP_SIZE = FALLOC_FL_KEEP_SIZE;
static const int SYS_FALLOC_FL_PUNCH_HOLE = FALLOC_FL_PUNCH_HOLE;
static const int SYS_FALLOC_FL_ZERO_RANGE = FALLOC_FL_ZERO_RANGE;

// ---- vhost-user: messages with file descriptors (SCM_RIGHTS) --------------------------------
// CMSG_* are macros Swift cannot call.
#include <sys/uio.h>
static const int SYS_VHOST_MAX_FDS = 16;

/// Send `len` bytes with `nfds` descriptors attached. Returns bytes sent or -errno.
static inline long sys_send_with_fds(int sock, const void *buf, unsigned long len, const int *fds, int nfds) {
    if (nfds < 0 || nfds > SYS_VHOST_MAX_FDS) return -EINVAL;
    struct iovec iov = { (void *)buf, len };
    union { char bytes[CMSG_SPACE(sizeof(int) * 16)]; struct cmsghdr align; } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (nfds > 0) {
        memset(&control, 0, sizeof control);
        msg.msg_control = control.bytes;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (unsigned long)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (unsigned long)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (unsigned long)nfds);
    }
    long n;
    do { n = sendmsg(sock, &msg, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

/// Receive up to `len` bytes and up to `maxfds` descriptors (close-on-exec; any beyond
/// `maxfds` are closed). `*nfds` says how many arrived. Returns bytes read (0: peer gone) or -errno.
static inline long sys_recv_with_fds(int sock, void *buf, unsigned long len, int *fds, int maxfds, int *nfds) {
    struct iovec iov = { buf, len };
    union { char bytes[CMSG_SPACE(sizeof(int) * 16)]; struct cmsghdr align; } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.bytes;
    msg.msg_controllen = sizeof control.bytes;
    *nfds = 0;
    long n;
    do { n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC); } while (n < 0 && errno == EINTR);
    if (n < 0) return -errno;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *in = (int *)CMSG_DATA(c);
        for (int i = 0; i < count; i++) {
            if (*nfds < maxfds) fds[(*nfds)++] = in[i]; else close(in[i]);
        }
    }
    return n;
}

// ---- device backend processes (virtiofsd) ---------------------------------------------------
#include <signal.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#ifndef MOUNT_ATTR_RDONLY
#define MOUNT_ATTR_RDONLY 0x00000001
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
struct sys_mount_attr { unsigned long long attr_set, attr_clr, propagation, userns_fd; };

/// pipe2(O_CLOEXEC), declared only under _GNU_SOURCE.
static inline int sys_pipe_cloexec(int fds[2]) { return (int)syscall(SYS_pipe2, fds, O_CLOEXEC); }

/// Where a share appears inside the backend's own mount namespace (see below).
static const char *const SYS_BACKEND_SHARE_PATH = "/tmp/swiftvmm-share";

/// Start `path` with `argv` (NULL-terminated) as a child that has `keep_fd` as fd `as_fd`
/// (inherited; every other descriptor of ours is close-on-exec), dies with the thread that
/// started it (PR_SET_PDEATHSIG: start it from the main thread), and, when `share_dir` is
/// set, runs in a mount namespace of its own where a copy of `share_dir`'s mount tree
/// (read-only with `readonly`, submounts included) sits at SYS_BACKEND_SHARE_PATH, on a
/// tmpfs mounted over /tmp there. A copy, not the directory itself: virtiofsd's sandbox
/// pivot_roots into what it shares, and pivot_root cannot move to the current root, so `/`
/// could not be shared otherwise; and the kernel, not the backend's good behaviour, keeps a
/// read-only share read-only. Between fork and exec only async-signal-safe calls. On failure
/// the child writes errno and the failed step's number to `report_fd` (close-on-exec, so EOF
/// there means exec worked) and exits 127. Returns the child's pid or -errno.
static inline int sys_spawn_backend(const char *path, char *const argv[], int keep_fd, int as_fd,
                                    const char *share_dir, int readonly, int report_fd, int stderr_fd) {
    pid_t pid = fork();
    if (pid < 0) return -errno;
    if (pid > 0) return pid;
    int step = 0;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    // The parent may have died between fork and prctl: then we would never be killed.
    if (getppid() == 1) _exit(127);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, 0);
    if (stderr_fd >= 0 && stderr_fd != 2) dup2(stderr_fd, 2);
    step = 1;
    if (keep_fd != as_fd) {
        if (dup2(keep_fd, as_fd) < 0) goto fail;
    } else {
        int fl = fcntl(as_fd, F_GETFD);
        if (fl < 0 || fcntl(as_fd, F_SETFD, fl & ~FD_CLOEXEC) < 0) goto fail;
    }
    if (share_dir) {
        step = 2;
        // unshare(2) and CLONE_NEWNS are declared only under _GNU_SOURCE: the raw call.
        if (syscall(SYS_unshare, 0x00020000 /* CLONE_NEWNS */) < 0) goto fail;
        step = 3;
        if (mount(0, "/", 0, MS_REC | MS_PRIVATE, 0) < 0) goto fail;
        step = 4;
        int tree = (int)syscall(SYS_open_tree, -100 /* AT_FDCWD */, share_dir,
                                1 /* OPEN_TREE_CLONE */ | 0x80000 /* OPEN_TREE_CLOEXEC */ | AT_RECURSIVE);
        if (tree < 0) goto fail;
        if (readonly) {
            step = 5;
            struct sys_mount_attr attr = { MOUNT_ATTR_RDONLY, 0, 0, 0 };
            if (syscall(SYS_mount_setattr, tree, "", 0x1000 /* AT_EMPTY_PATH */ | AT_RECURSIVE, &attr, sizeof attr) < 0) goto fail;
        }
        step = 6;
        if (mount("swiftvmm", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700") < 0) goto fail;
        step = 7;
        if (mkdir(SYS_BACKEND_SHARE_PATH, 0700) < 0) goto fail;
        step = 8;
        if (syscall(SYS_move_mount, tree, "", -100, SYS_BACKEND_SHARE_PATH, 0x4 /* MOVE_MOUNT_F_EMPTY_PATH */) < 0) goto fail;
        close(tree);
    }
    step = 9;
    execv(path, argv);
fail:;
    int report[2] = { errno, step };
    if (write(report_fd, report, sizeof report) < 0) {}
    _exit(127);
}
#endif
