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
#endif
