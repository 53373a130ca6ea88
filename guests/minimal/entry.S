/*
 * entry.S: the two ways into the minimal guest, and the tables both of them
 * switch to (GDT, page tables, IDT) before calling kmain() in main.c.
 *
 * Everything here is built statically by the assembler.  On the machines this
 * project is tested on, guest kernel code is run by KVM's instruction emulator
 * at roughly a microsecond per instruction, so a loop that fills 2048 page
 * directory entries at boot would cost milliseconds.  The loader copies these
 * tables in for free.
 */

#define KERNEL_CS	0x08
#define KERNEL_DS	0x10

/*
 * Where the image is linked (see minimal.ld).  The IDT below needs it: an IDT
 * gate splits the handler address into 16-bit pieces, and no ELF relocation
 * can do "(symbol >> 16) & 0xffff".  So the gates store "stub - IMAGE_BASE"
 * (an ordinary 16-bit relocation) plus the constant IMAGE_BASE >> 16, and the
 * linker script asserts the stubs really lie in the image's first 64 KiB.
 */
#define IMAGE_BASE	0x100000

#define NR_VECTORS	49		/* 0-31 exceptions, 0x20-0x2f PIC IRQs, 0x30 MSI-X */
#define STUB_SIZE	16

/* Exceptions for which the CPU pushes an error code: 8, 10-14, 17, 21, 29, 30. */
#define ERRCODE_VECTORS	0x60227d00

#define CR0_PG		0x80000000
#define CR4_PAE		0x00000020
#define MSR_EFER	0xc0000080
#define EFER_LME	0x00000100

#define PTE_P		0x001
#define PTE_W		0x002
#define PTE_PS		0x080		/* in a page directory entry: 2 MiB page */

/*
 * From 32-bit protected mode with paging off to long mode (compatibility
 * mode until the far jump that follows): PAE on, %cr3 at our tables, EFER.LME,
 * paging on.  Clobbers %eax, %ecx and %edx.
 */
.macro ENTER_LONG_MODE
	movl	%cr4, %eax
	orl	$CR4_PAE, %eax
	movl	%eax, %cr4
	movl	$pml4, %eax
	movl	%eax, %cr3
	movl	$MSR_EFER, %ecx
	rdmsr
	orl	$EFER_LME, %eax
	wrmsr
	movl	%cr0, %eax
	orl	$CR0_PG, %eax
	movl	%eax, %cr0
.endm

	.section .text.entry, "ax"

/*
 * Entry 1, the ELF entry point: swiftvmm jumps here already in 64-bit long
 * mode, with its own GDT and identity-mapped page tables, interrupts off and
 * %rsi pointing to a Linux-style boot_params ("zero page").  We stop using the
 * VMM's tables at once: they only promise to map low memory, and we want to
 * know exactly what we run on.
 */
	.code64
	.globl start64
start64:
	movq	%rsi, %rdi		/* kmain(boot_params, hvm_start_info = 0) */
	xorl	%esi, %esi
	movl	$pml4, %eax
	movq	%rax, %cr3
	lgdt	gdt_desc(%rip)
	/* A far return is the shortest way to reload %cs in 64-bit mode. */
	pushq	$KERNEL_CS
	pushq	$common64
	lretq

/*
 * Entry 2, PVH (the Xen/x86 direct boot ABI, which QEMU, Firecracker and
 * cloud-hypervisor implement): 32-bit protected mode, flat segments, paging
 * off, interrupts off, %ebx = physical address of struct hvm_start_info.
 * The ELF note at the bottom of this file tells the VMM about this address.
 * To reach long mode: load our GDT, enable PAE, point %cr3 at our tables,
 * set EFER.LME and turn on paging; then a far jump loads the 64-bit %cs.
 * We never reload %cs with a 32-bit selector, so our GDT needs no 32-bit code
 * segment: the old one stays cached in %cs until the far jump.
 */
	.code32
	.globl start32_pvh
start32_pvh:
	lgdt	gdt_desc		/* in 32-bit mode this reads a 32-bit base */
	ENTER_LONG_MODE			/* keeps %ebx */
	ljmp	$KERNEL_CS, $pvh64

	.code64
pvh64:
	/* The upper halves of registers are undefined after the mode switch:
	 * a 32-bit move clears them. */
	movl	%ebx, %esi		/* kmain(boot_params = 0, hvm_start_info) */
	xorl	%edi, %edi

common64:
	movl	$KERNEL_DS, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %fs
	movl	%eax, %gs
	movl	%eax, %ss
	movl	$stack_top, %esp
	lidt	idt_desc(%rip)
	xorl	%ebp, %ebp		/* terminates frame-pointer stack walks */
	call	kmain
1:	cli				/* kmain never returns; just in case */
	hlt
	jmp	1b

/*
 * One 16-byte stub per vector.  Each pushes a dummy error code when the CPU
 * does not push one (so every frame looks the same), then the vector number.
 * The .org checks at assembly time that no stub outgrew its slot, because the
 * IDT below computes stub addresses as isr_stubs + vector * 16.
 */
	.balign	16
	.globl isr_stubs, isr_stubs_end
isr_stubs:
	.set	vec, 0
	.rept	NR_VECTORS
	.org	isr_stubs + vec * STUB_SIZE, 0x90
	.if	((ERRCODE_VECTORS >> vec) & 1) == 0
	pushq	$0
	.endif
	pushq	$vec
	jmp	isr_common
	.set	vec, vec + 1
	.endr
isr_stubs_end:

/*
 * Save the registers C code may clobber, call trap(frame), and go back.
 * The CPU aligned %rsp to 16 bytes before pushing its 5-word frame; with the
 * 2 words from the stub and 9 here (16 words in all), the call sees the
 * 16-byte alignment the ABI wants.  Callee-saved registers survive trap()
 * anyway.  Exceptions never come back here: trap() exits the guest.
 */
isr_common:
	pushq	%rax
	pushq	%rcx
	pushq	%rdx
	pushq	%rsi
	pushq	%rdi
	pushq	%r8
	pushq	%r9
	pushq	%r10
	pushq	%r11
	movq	%rsp, %rdi
	call	trap
	popq	%r11
	popq	%r10
	popq	%r9
	popq	%r8
	popq	%rdi
	popq	%rsi
	popq	%rdx
	popq	%rcx
	popq	%rax
	addq	$16, %rsp		/* vector and error code */
	iretq

/*
 * The PVH note: name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18), desc the
 * 32-bit physical entry address.  Keep the section 4-byte aligned: QEMU pads
 * the name to the PT_NOTE segment's p_align when it looks for the desc.
 * (QEMU 7.2 also reads 8 bytes of desc for an ELF64; the 4 past the note
 * come from its zeroed buffer, and newer QEMUs read 4.)
 */
	.section .note.pvh, "a", @note
	.balign	4
	.long	4			/* namesz */
	.long	4			/* descsz */
	.long	18			/* type */
	.asciz	"Xen"
	.long	start32_pvh

/*
 * Page tables: the first 4 GiB identity-mapped with 2 MiB pages, present
 * and writable.  One PML4 entry -> one PDPT with 4 entries -> 4 page
 * directories of 512 entries each.  That covers RAM, the hypercall page at
 * 0x2000 and the LAPIC/IOAPIC at 0xfee00000/0xfec00000.  Anything at or
 * above 4 GiB faults, which fault=pf relies on.
 */
	.section .data.pagetables, "aw"
	.balign	4096
pml4:
	.quad	pdpt + (PTE_P | PTE_W)
	.fill	511, 8, 0
pdpt:
	.set	i, 0
	.rept	4
	.quad	pd + i * 4096 + (PTE_P | PTE_W)
	.set	i, i + 1
	.endr
	.fill	508, 8, 0
pd:
	.set	i, 0
	.rept	4 * 512
	.quad	(i << 21) | (PTE_P | PTE_W | PTE_PS)
	.set	i, i + 1
	.endr

	.data
/*
 * Our GDT: null, 64-bit code (0x08), flat data (0x10).  The "accessed" bits
 * are preset so the CPU never needs to write them back.
 */
	.balign	16
gdt:
	.quad	0
	.quad	0x00af9b000000ffff	/* L=1, P=1, DPL 0, execute/read */
	.quad	0x00cf93000000ffff	/* G=1, D/B=1, P=1, DPL 0, read/write */
gdt_end:
	/* Serves both lgdt forms: 32-bit mode reads only the low half of the base. */
gdt_desc:
	.word	gdt_end - gdt - 1
	.quad	gdt

/* 64-bit interrupt gates (type 0xe, present, DPL 0) for vectors 0-48. */
	.balign	16
idt:
	.set	vec, 0
	.rept	NR_VECTORS
	.word	isr_stubs + vec * STUB_SIZE - IMAGE_BASE	/* offset 15:0 */
	.word	KERNEL_CS
	.byte	0				/* no IST */
	.byte	0x8e
	.word	IMAGE_BASE >> 16		/* offset 31:16 */
	.long	0				/* offset 63:32 */
	.long	0
	.set	vec, vec + 1
	.endr
idt_end:
	.globl idt_desc
idt_desc:
	.word	idt_end - idt - 1
	.quad	idt

/*
 * A second vCPU (smp.c).  The BSP copies the trampoline below to AP_BASE in
 * low memory and sends INIT and two SIPIs with vector AP_BASE >> 12: the AP
 * starts there in real mode with %cs = AP_BASE >> 4.  It loads the
 * trampoline's own GDT (a 32-bit code segment, which ours lacks), enters
 * protected mode, then long mode on our page tables as start32_pvh does, and
 * jumps to ap_entry64 in the image, which switches to our GDT and IDT and
 * calls ap_main() on its own stack.  Offsets in the trampoline are taken
 * relative to its start, since it runs from the copy.
 */
#define AP_BASE		0x10000
#define AP_CS32		0x08
#define AP_CS64		0x10
#define AP_DS		0x18
#define TRAMPOLINE(sym)	(AP_BASE + (sym) - ap_trampoline)

	.section .text
	.code16
	.balign	16
	.globl	ap_trampoline, ap_trampoline_end
ap_trampoline:
	cli
	movw	%cs, %ax
	movw	%ax, %ds
	lgdtl	ap_gdt_desc - ap_trampoline
	movl	%cr0, %eax
	orl	$1, %eax		/* PE */
	movl	%eax, %cr0
	ljmpl	$AP_CS32, $TRAMPOLINE(ap32)

	.code32
ap32:
	movl	$AP_DS, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	ENTER_LONG_MODE
	ljmp	$AP_CS64, $TRAMPOLINE(ap64_low)

	.code64
ap64_low:
	movabsq	$ap_entry64, %rax
	jmp	*%rax

	.balign	8
ap_gdt:
	.quad	0
	.quad	0x00cf9a000000ffff	/* 32-bit code, flat */
	.quad	0x00af9a000000ffff	/* 64-bit code */
	.quad	0x00cf92000000ffff	/* data, flat */
ap_gdt_desc:
	.word	ap_gdt_desc - ap_gdt - 1
	.long	TRAMPOLINE(ap_gdt)
ap_trampoline_end:

ap_entry64:
	movl	$ap_stack_top, %esp	/* the far return below pushes */
	lgdt	gdt_desc(%rip)
	pushq	$KERNEL_CS
	pushq	$ap_common
	lretq
ap_common:
	movl	$KERNEL_DS, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %fs
	movl	%eax, %gs
	movl	%eax, %ss
	movl	$ap_stack_top, %esp
	lidt	idt_desc(%rip)
	xorl	%ebp, %ebp
	call	ap_main
1:	cli
	hlt
	jmp	1b

/* 16 KiB of stack.  .bss is zeroed by the loader (memsz > filesz). */
	.bss
	.balign	16
stack:
	.skip	16384
stack_top:
	.skip	8192
ap_stack_top:			/* the second vCPU's, 8 KiB */

	.section .note.GNU-stack, "", @progbits
