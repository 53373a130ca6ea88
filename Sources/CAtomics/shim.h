// Ordered loads and stores on memory shared with the guest, for the virtqueue rings.
#ifndef SWIFTVMM_CATOMICS_SHIM_H
#define SWIFTVMM_CATOMICS_SHIM_H
// The guest's driver runs on another CPU; ring indices are read with acquire and published
// with release semantics, as the virtio spec's memory model requires.
#include <stdint.h>
static inline uint16_t sys_load_acquire_u16(const void *p) {
    return __atomic_load_n((const uint16_t *)p, __ATOMIC_ACQUIRE);
}
static inline void sys_store_release_u16(void *p, uint16_t v) {
    __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELEASE);
}
static inline void sys_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

#endif
