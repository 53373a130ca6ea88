/*
 * floor.c: the floor for swiftvmm's exit round trip.  The least a VMM can do per
 * port-I/O exit: raw ioctls, no devices, no bus, no checks.  It runs the same guest
 * loop as the minimal guest's bench=pio:N (out %al,$0x80; sub $1,%rdi; jne), in
 * long mode, N times, then halts.
 *
 *   cc -O2 -o floor floor.c && ./floor N        (prints the exits it handled)
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#define MEM_SIZE	(4 << 20)
#define PML4		0x1000
#define PDPT		0x2000
#define PD		0x3000
#define CODE		0x100000

static void die(const char *what) { perror(what); exit(70); }

int main(int argc, char **argv)
{
	uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 0) : 1000000, exits = 0;
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0) die("/dev/kvm");
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0) die("KVM_CREATE_VM");
	uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uint64_t)mem };
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");

	/* Identity-map the first 2 MiB... and the code at 1 MiB lives inside it. */
	*(uint64_t *)(mem + PML4) = PDPT | 3;
	*(uint64_t *)(mem + PDPT) = PD | 3;
	*(uint64_t *)(mem + PD) = 0x83;
	static const uint8_t loop[] = {
		0x48, 0x85, 0xff,		/* test   %rdi,%rdi */
		0x74, 0x08,			/* je     (hlt) */
		0xe6, 0x80,			/* out    %al,$0x80 */
		0x48, 0x83, 0xef, 0x01,		/* sub    $0x1,%rdi */
		0x75, 0xf8,			/* jne    (out) */
		0xf4,				/* hlt */
	};
	memcpy(mem + CODE, loop, sizeof(loop));

	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0) die("KVM_CREATE_VCPU");
	int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	struct kvm_run *run = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);

	/* Long mode needs CPUID to say so before EFER.LME is accepted. */
	struct { struct kvm_cpuid2 c; struct kvm_cpuid_entry2 e[128]; } cpuid = { .c.nent = 128 };
	if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid) < 0) die("KVM_GET_SUPPORTED_CPUID");
	if (ioctl(vcpu, KVM_SET_CPUID2, &cpuid) < 0) die("KVM_SET_CPUID2");

	struct kvm_sregs s;
	if (ioctl(vcpu, KVM_GET_SREGS, &s) < 0) die("KVM_GET_SREGS");
	struct kvm_segment code = { .base = 0, .limit = 0xffffffff, .selector = 0x10, .type = 11,
				    .present = 1, .s = 1, .l = 1, .g = 1 };
	struct kvm_segment data = code;
	data.selector = 0x18; data.type = 3; data.l = 0; data.db = 1;
	s.cs = code; s.ds = s.es = s.fs = s.gs = s.ss = data;
	s.cr0 = 0x80050033; s.cr3 = PML4; s.cr4 = 0x20; s.efer = 0x500;
	if (ioctl(vcpu, KVM_SET_SREGS, &s) < 0) die("KVM_SET_SREGS");
	struct kvm_regs r = { .rip = CODE, .rdi = n, .rflags = 2 };
	if (ioctl(vcpu, KVM_SET_REGS, &r) < 0) die("KVM_SET_REGS");

	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
		if (run->exit_reason == KVM_EXIT_IO) {
			exits++;
			continue;
		}
		if (run->exit_reason == KVM_EXIT_HLT)
			break;
		fprintf(stderr, "floor: unexpected exit %u\n", run->exit_reason);
		return 71;
	}
	printf("%llu\n", (unsigned long long)exits);
	return 0;
}
