/*
 * hypercall.h: calling swiftvmm.
 *
 * swiftvmm fills the page at guest-physical 0x2000 with one 32-byte stub per
 * hypercall number (0..126); what the stub does to reach the VMM is its own
 * business (port I/O: a vmcall would never reach user space).  We just make a
 * near call to it.  The linker script binds the hypercall_* symbols to those
 * slots.  Arguments go in %rdi, %rsi, %rdx, %rcx, %r8, the result comes back
 * in %rax (negative: -errno), and the stub clobbers only %rax and the flags,
 * so the argument registers are plain inputs.  "memory" because the VMM reads
 * or writes our buffers behind the compiler's back.
 *
 * Slot 127 is not code but an info block; the guest only calls the page after
 * seeing its magic (under QEMU, 0x2000 is ordinary RAM).
 */
#ifndef MINIMAL_HYPERCALL_H
#define MINIMAL_HYPERCALL_H

#include "lib.h"

#define HYPERCALL_PAGE	0x2000UL
#define HYPERCALL_SLOT	32

struct hypercall_info {
	char magic[8];		/* "SWIFTVMM" */
	u32 abi_version;	/* 1 */
	u32 nr_slots;		/* 127 */
};

extern char hypercall_noop[], hypercall_console_write[], hypercall_exit[];
extern char hypercall_time_ns[], hypercall_random[], hypercall_version[];
extern char hypercall_checksum[];
extern const volatile struct hypercall_info hypercall_info;

/* Set by hypercall_init() (hypercall.c) if slot 127 holds the magic. */
extern bool have_hypercalls;
void hypercall_init(void);

#define EFAULT	14
#define EINVAL	22
#define ENOSYS	38

/*
 * A call to one slot with up to two arguments (unused ones are passed as 0).
 * %P prints the bare symbol, giving "call hypercall_noop".
 */
#define HYPERCALL(slot, a, b) ({					\
	long _r;							\
	asm volatile("call %P1" : "=a"(_r)				\
		     : "i"(slot), "D"((u64)(a)), "S"((u64)(b))		\
		     : "memory", "cc");					\
	_r;								\
})

static inline long hc_noop(void) { return HYPERCALL(hypercall_noop, 0, 0); }
static inline u64 hc_time_ns(void) { return HYPERCALL(hypercall_time_ns, 0, 0); }

static inline long hc_console_write(const void *buf, u64 len)
{
	return HYPERCALL(hypercall_console_write, buf, len);
}

static inline long hc_random(void *buf, u64 len)
{
	return HYPERCALL(hypercall_random, buf, len);
}

static inline long hc_version(char *buf, u64 len)
{
	return HYPERCALL(hypercall_version, buf, len);
}

/* The worked example of adding a hypercall (docs/hypercalls.md): FNV-1a of a buffer. */
static inline long hc_checksum(const void *buf, u64 len)
{
	return HYPERCALL(hypercall_checksum, buf, len);
}

static inline _Noreturn void hc_exit(long status)
{
	HYPERCALL(hypercall_exit, status, 0);
	__builtin_unreachable();
}

/* Any slot by number, for the ones without a symbol. */
static inline long hc_call_nr(unsigned nr)
{
	long r;
	asm volatile("call *%1" : "=a"(r) : "r"(HYPERCALL_PAGE + nr * HYPERCALL_SLOT)
		     : "memory", "cc");
	return r;
}

#endif
