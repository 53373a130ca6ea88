// Host facilities Swift's Glibc module does not export: eventfd and thread names.
#ifndef SWIFTVMM_CSYSTEM_SHIM_H
#define SWIFTVMM_CSYSTEM_SHIM_H
#include <sys/eventfd.h>
#include <sys/random.h>

// Declared here because glibc only declares it under _GNU_SOURCE.
extern int pthread_setname_np(unsigned long thread, const char *name);  // pthread_t is unsigned long in glibc

static inline int sys_eventfd(unsigned int initval, int flags) { return eventfd(initval, flags); }
static const int SYS_EFD_CLOEXEC = EFD_CLOEXEC;
static const int SYS_EFD_NONBLOCK = EFD_NONBLOCK;
static inline int sys_set_thread_name(unsigned long thread, const char *name) {
    return pthread_setname_np(thread, name);
}
static inline long sys_getrandom(void *buf, unsigned long len) { return getrandom(buf, len, 0); }
#endif
