/*
 * hugealign.c: an LD_PRELOAD shim that puts a VMM's guest RAM on 2 MiB boundaries, for a
 * what-if measurement only (the linuxboot case's profile).
 *
 *   gcc -shared -fPIC -O2 -o hugealign.so bench/hugealign.c
 *   LD_PRELOAD=./hugealign.so swiftvmm 128m ...
 *
 * KVM can map guest memory with 2 MiB pages (one nested page fault per 2 MiB instead of 512)
 * only where the host's mapping is a transparent huge page at the same offset within 2 MiB as
 * the guest-physical address, i.e. where guest RAM starts on a 2 MiB boundary. QEMU aligns its
 * RAM so and asks for huge pages (MADV_HUGEPAGE); a plain mmap gets neither. This shim does the
 * same for every anonymous mapping of 64 MiB or more: maps 2 MiB extra, trims to a 2 MiB
 * boundary, and advises huge pages. Nothing else changes.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	const size_t huge = 2u << 20;
	if (addr || fd != -1 || !(flags & MAP_ANONYMOUS) || len < (64u << 20))
		return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
	char *p = (char *)syscall(SYS_mmap, NULL, len + huge, prot, flags, fd, off);
	if (p == MAP_FAILED)
		return p;
	char *q = (char *)(((uintptr_t)p + huge - 1) & ~(uintptr_t)(huge - 1));
	if (q > p)
		syscall(SYS_munmap, p, q - p);
	if (q + len < p + len + huge)
		syscall(SYS_munmap, q + len, p + len + huge - (q + len));
	madvise(q, len, MADV_HUGEPAGE);
	return q;
}
