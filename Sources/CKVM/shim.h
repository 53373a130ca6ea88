// The C side of swiftvmm's KVM layer.
//
// Swift imports <linux/kvm.h>'s structs but not its function-like macros (the ioctl
// numbers are _IOW(...) expressions), nor glibc's variadic ioctl(), nor kvm_run's anonymous
// unions in a form that is cheap to touch on every exit. This header re-exports what is
// missing as constants of the right type and tiny static inline functions, which the Clang
// importer compiles straight into the Swift callers.
#ifndef SWIFTVMM_CKVM_SHIM_H
#define SWIFTVMM_CKVM_SHIM_H

#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <stdint.h>
#include <string.h>
#include <signal.h>
#include <errno.h>
#include <sys/syscall.h>

// ---- ioctl numbers -------------------------------------------------------------------
// /dev/kvm
static const unsigned long SKVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long SKVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long SKVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long SKVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long SKVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
// VM fd
static const unsigned long SKVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
static const unsigned long SKVM_CREATE_VCPU = KVM_CREATE_VCPU;
static const unsigned long SKVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
static const unsigned long SKVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
static const unsigned long SKVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
static const unsigned long SKVM_CREATE_PIT2 = KVM_CREATE_PIT2;
static const unsigned long SKVM_IRQ_LINE = KVM_IRQ_LINE;
static const unsigned long SKVM_IRQFD = KVM_IRQFD;
static const unsigned long SKVM_IOEVENTFD = KVM_IOEVENTFD;
static const unsigned long SKVM_SET_GSI_ROUTING = KVM_SET_GSI_ROUTING;
static const unsigned long SKVM_GET_IRQCHIP = KVM_GET_IRQCHIP;
// vCPU fd
static const unsigned long SKVM_RUN = KVM_RUN;
static const unsigned long SKVM_GET_REGS = KVM_GET_REGS;
static const unsigned long SKVM_SET_REGS = KVM_SET_REGS;
static const unsigned long SKVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long SKVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long SKVM_GET_FPU = KVM_GET_FPU;
static const unsigned long SKVM_SET_FPU = KVM_SET_FPU;
static const unsigned long SKVM_SET_CPUID2 = KVM_SET_CPUID2;
static const unsigned long SKVM_GET_MSRS = KVM_GET_MSRS;
static const unsigned long SKVM_SET_MSRS = KVM_SET_MSRS;
static const unsigned long SKVM_GET_LAPIC = KVM_GET_LAPIC;
static const unsigned long SKVM_SET_LAPIC = KVM_SET_LAPIC;
static const unsigned long SKVM_TRANSLATE = KVM_TRANSLATE;
static const unsigned long SKVM_GET_MP_STATE = KVM_GET_MP_STATE;
static const unsigned long SKVM_SET_MP_STATE = KVM_SET_MP_STATE;

// ---- constants, with the types the struct fields have -----------------------------------
static const uint32_t SKVM_EXIT_UNKNOWN = KVM_EXIT_UNKNOWN;
static const uint32_t SKVM_EXIT_EXCEPTION = KVM_EXIT_EXCEPTION;
static const uint32_t SKVM_EXIT_IO = KVM_EXIT_IO;
static const uint32_t SKVM_EXIT_HYPERCALL = KVM_EXIT_HYPERCALL;
static const uint32_t SKVM_EXIT_DEBUG = KVM_EXIT_DEBUG;
static const uint32_t SKVM_EXIT_HLT = KVM_EXIT_HLT;
static const uint32_t SKVM_EXIT_MMIO = KVM_EXIT_MMIO;
static const uint32_t SKVM_EXIT_IRQ_WINDOW_OPEN = KVM_EXIT_IRQ_WINDOW_OPEN;
static const uint32_t SKVM_EXIT_SHUTDOWN = KVM_EXIT_SHUTDOWN;
static const uint32_t SKVM_EXIT_FAIL_ENTRY = KVM_EXIT_FAIL_ENTRY;
static const uint32_t SKVM_EXIT_INTR = KVM_EXIT_INTR;
static const uint32_t SKVM_EXIT_INTERNAL_ERROR = KVM_EXIT_INTERNAL_ERROR;
static const uint32_t SKVM_EXIT_SYSTEM_EVENT = KVM_EXIT_SYSTEM_EVENT;
static const uint32_t SKVM_EXIT_X86_RDMSR = KVM_EXIT_X86_RDMSR;
static const uint32_t SKVM_EXIT_X86_WRMSR = KVM_EXIT_X86_WRMSR;

static const uint8_t SKVM_EXIT_IO_IN = KVM_EXIT_IO_IN;
static const uint8_t SKVM_EXIT_IO_OUT = KVM_EXIT_IO_OUT;

static const uint32_t SKVM_INTERNAL_ERROR_EMULATION = KVM_INTERNAL_ERROR_EMULATION;
static const uint32_t SKVM_SYSTEM_EVENT_SHUTDOWN = KVM_SYSTEM_EVENT_SHUTDOWN;
static const uint32_t SKVM_SYSTEM_EVENT_RESET = KVM_SYSTEM_EVENT_RESET;
static const uint32_t SKVM_SYSTEM_EVENT_CRASH = KVM_SYSTEM_EVENT_CRASH;

static const uint32_t SKVM_MEM_READONLY = KVM_MEM_READONLY;

static const int SKVM_CAP_IRQCHIP = KVM_CAP_IRQCHIP;
static const int SKVM_CAP_USER_MEMORY = KVM_CAP_USER_MEMORY;
static const int SKVM_CAP_SET_TSS_ADDR = KVM_CAP_SET_TSS_ADDR;
static const int SKVM_CAP_SET_IDENTITY_MAP_ADDR = KVM_CAP_SET_IDENTITY_MAP_ADDR;
static const int SKVM_CAP_EXT_CPUID = KVM_CAP_EXT_CPUID;
static const int SKVM_CAP_PIT2 = KVM_CAP_PIT2;
static const int SKVM_CAP_IMMEDIATE_EXIT = KVM_CAP_IMMEDIATE_EXIT;
static const int SKVM_CAP_READONLY_MEM = KVM_CAP_READONLY_MEM;
static const int SKVM_CAP_IOEVENTFD = KVM_CAP_IOEVENTFD;
static const int SKVM_CAP_IRQFD = KVM_CAP_IRQFD;
static const int SKVM_CAP_IRQ_ROUTING = KVM_CAP_IRQ_ROUTING;
static const int SKVM_CAP_SIGNAL_MSI = KVM_CAP_SIGNAL_MSI;
static const int SKVM_CAP_NR_VCPUS = KVM_CAP_NR_VCPUS;
static const int SKVM_CAP_MAX_VCPUS = KVM_CAP_MAX_VCPUS;
static const int SKVM_CAP_NR_MEMSLOTS = KVM_CAP_NR_MEMSLOTS;

static const uint32_t SKVM_PIT_SPEAKER_DUMMY = KVM_PIT_SPEAKER_DUMMY;

// ---- ioctl without varargs -------------------------------------------------------------
static inline int skvm_ioctl(int fd, unsigned long request, unsigned long arg) {
    return ioctl(fd, request, arg);
}
static inline int skvm_ioctl_ptr(int fd, unsigned long request, void *arg) {
    return ioctl(fd, request, arg);
}

// KVM_RUN as a bare system call, for the vCPU loop: glibc's ioctl() is a variadic call
// through the PLT that stores errno; this is the one syscall instruction. Returns 0, or
// -errno on failure (EINTR when kicked).
static inline long skvm_run_vcpu(int fd) {
#if defined(__x86_64__)
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "0"((long)SYS_ioctl), "D"((long)fd), "S"((long)KVM_RUN), "d"(0L)
                     : "rcx", "r11", "memory");
    return ret;
#else
    return ioctl(fd, KVM_RUN, 0) < 0 ? -errno : 0;
#endif
}

// ---- kvm_run: the per-exit accessors ----------------------------------------------------
// Swift's view of kvm_run's anonymous union copies the whole 256-byte union per access in
// debug builds; these read exactly the field the exit loop needs.
static inline uint32_t skvm_exit_reason(const struct kvm_run *run) { return run->exit_reason; }

static inline uint8_t skvm_io_direction(const struct kvm_run *run) { return run->io.direction; }
static inline uint8_t skvm_io_size(const struct kvm_run *run) { return run->io.size; }
static inline uint16_t skvm_io_port(const struct kvm_run *run) { return run->io.port; }
static inline uint32_t skvm_io_count(const struct kvm_run *run) { return run->io.count; }
// The first 8 bytes of the io exit in one load: direction | size << 8 | port << 16 |
// count << 32, so the loop can recognise a hypercall (or a single access) with one compare.
static inline uint64_t skvm_io_header(const struct kvm_run *run) {
    uint64_t header;
    __builtin_memcpy(&header, &run->io, sizeof header);
    return header;
}
static inline uint8_t *skvm_io_data(struct kvm_run *run) {
    return (uint8_t *)run + run->io.data_offset;
}

// KVM_CAP_SYNC_REGS: the general registers travel in kvm_run itself. Asked for on every exit
// (kvm_valid_regs) they are there when the exit is read; marked dirty they are loaded on the
// next entry. A hypercall then costs no GET_REGS/SET_REGS ioctls.
static const int SKVM_CAP_SYNC_REGS = KVM_CAP_SYNC_REGS;
static const uint64_t SKVM_SYNC_X86_REGS = KVM_SYNC_X86_REGS;
static inline struct kvm_regs *skvm_sync_regs(struct kvm_run *run) { return &run->s.regs.regs; }
static inline void skvm_set_valid_regs(struct kvm_run *run, uint64_t mask) { run->kvm_valid_regs = mask; }
static inline void skvm_set_dirty_regs(struct kvm_run *run, uint64_t mask) { run->kvm_dirty_regs = mask; }

static inline uint64_t skvm_mmio_address(const struct kvm_run *run) { return run->mmio.phys_addr; }
static inline uint32_t skvm_mmio_length(const struct kvm_run *run) { return run->mmio.len; }
static inline uint8_t skvm_mmio_is_write(const struct kvm_run *run) { return run->mmio.is_write; }
static inline uint8_t *skvm_mmio_data(struct kvm_run *run) { return run->mmio.data; }

static inline uint32_t skvm_internal_suberror(const struct kvm_run *run) { return run->internal.suberror; }
static inline uint32_t skvm_internal_ndata(const struct kvm_run *run) { return run->internal.ndata; }
static inline uint64_t skvm_internal_data(const struct kvm_run *run, uint32_t i) {
    return i < 16 ? run->internal.data[i] : 0;
}
static inline uint64_t skvm_emulation_flags(const struct kvm_run *run) { return run->emulation_failure.flags; }
static inline uint8_t skvm_emulation_insn_size(const struct kvm_run *run) { return run->emulation_failure.insn_size; }
static inline const uint8_t *skvm_emulation_insn_bytes(const struct kvm_run *run) {
    return run->emulation_failure.insn_bytes;
}

static inline uint64_t skvm_fail_entry_reason(const struct kvm_run *run) {
    return run->fail_entry.hardware_entry_failure_reason;
}
static inline uint32_t skvm_system_event_type(const struct kvm_run *run) { return run->system_event.type; }

// immediate_exit is read by the kernel on KVM_RUN entry; it is written by whichever thread
// wants the vCPU out, so store it atomically.
static inline void skvm_set_immediate_exit(struct kvm_run *run, uint8_t value) {
    __atomic_store_n(&run->immediate_exit, value, __ATOMIC_SEQ_CST);
}

// ---- in-kernel interrupt controllers (for reports on a hung guest) -------------------------
// The IOAPIC's pin state: its IRR bit and its redirection entry (vector, mask, trigger mode,
// remote IRR). Returns -1 if KVM_GET_IRQCHIP fails.
static inline int skvm_get_ioapic(int vmfd, uint32_t *irr, uint64_t *entries /* [24] */) {
    struct kvm_irqchip chip;
    memset(&chip, 0, sizeof chip);
    chip.chip_id = KVM_IRQCHIP_IOAPIC;
    if (ioctl(vmfd, KVM_GET_IRQCHIP, &chip) != 0) return -1;
    *irr = chip.chip.ioapic.irr;
    for (int i = 0; i < KVM_IOAPIC_NUM_PINS; i++) entries[i] = chip.chip.ioapic.redirtbl[i].bits;
    return 0;
}
// One 8259 of the PIC pair (chip 0: master, IRQs 0-7; 1: slave): edge detector, IRR, IMR, ISR,
// ELCR, vector base, auto-EOI, as {last_irr, irr, imr, isr, elcr, irq_base, auto_eoi}.
static inline int skvm_get_pic(int vmfd, uint32_t chip_id, uint8_t *out /* [7] */) {
    struct kvm_irqchip chip;
    memset(&chip, 0, sizeof chip);
    chip.chip_id = chip_id;
    if (ioctl(vmfd, KVM_GET_IRQCHIP, &chip) != 0) return -1;
    const struct kvm_pic_state *p = &chip.chip.pic;
    out[0] = p->last_irr; out[1] = p->irr; out[2] = p->imr; out[3] = p->isr;
    out[4] = p->elcr; out[5] = p->irq_base; out[6] = p->auto_eoi;
    return 0;
}
// A 256-bit LAPIC register bank (IRR at 0x200, ISR at 0x100, TMR at 0x180): 8 words 16 bytes apart.
static inline uint32_t skvm_lapic_word(const struct kvm_lapic_state *l, uint32_t base, uint32_t i) {
    uint32_t v;
    memcpy(&v, l->regs + base + 16 * (i & 7), 4);
    return v;
}

// ---- flexible array members (dropped by the importer) -----------------------------------
static inline struct kvm_cpuid_entry2 *skvm_cpuid2_entries(struct kvm_cpuid2 *c) { return c->entries; }
static inline unsigned long skvm_cpuid2_size(uint32_t n) {
    return sizeof(struct kvm_cpuid2) + n * sizeof(struct kvm_cpuid_entry2);
}
static inline struct kvm_msr_entry *skvm_msrs_entries(struct kvm_msrs *m) { return m->entries; }
static inline unsigned long skvm_msrs_size(uint32_t n) {
    return sizeof(struct kvm_msrs) + n * sizeof(struct kvm_msr_entry);
}
static inline struct kvm_irq_routing_entry *skvm_routing_entries(struct kvm_irq_routing *r) { return r->entries; }
static inline unsigned long skvm_routing_size(uint32_t n) {
    return sizeof(struct kvm_irq_routing) + n * sizeof(struct kvm_irq_routing_entry);
}

// ---- the vCPU kick signal -----------------------------------------------------------------
// A vCPU thread blocked in KVM_RUN is kicked out by a signal whose handler does nothing: the
// point is only that KVM_RUN returns EINTR. No SA_RESTART, so nothing is restarted behind our
// back. Used together with immediate_exit so a kick that lands just before KVM_RUN is not lost.
static void skvm_kick_handler(int sig) { (void)sig; }
static inline int skvm_install_kick_handler(int sig) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = skvm_kick_handler;
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, NULL);
}

static inline int skvm_errno(void) { return errno; }

#endif
