/*
 * virtio.h: a virtio 1.x PCI transport and split virtqueues, as small as the
 * spec allows.  One request at a time per queue (the receive queue of
 * virtio-net excepted), descriptors in .bss, completion by polling the used
 * ring or by an MSI-X interrupt.
 */
#ifndef MINIMAL_VIRTIO_H
#define MINIMAL_VIRTIO_H

#include "lib.h"

#define VIRTIO_ID_NET		1
#define VIRTIO_ID_BLK		2
#define VIRTIO_ID_RNG		4

/* device_status bits */
#define VIRTIO_ACKNOWLEDGE	1
#define VIRTIO_DRIVER		2
#define VIRTIO_DRIVER_OK	4
#define VIRTIO_FEATURES_OK	8
#define VIRTIO_NEEDS_RESET	0x40
#define VIRTIO_FAILED		0x80

#define VIRTIO_F_VERSION_1	(1ULL << 32)

/* A split virtqueue descriptor; flags: */
#define VIRTQ_DESC_F_NEXT	1
#define VIRTQ_DESC_F_WRITE	2	/* device writes (otherwise reads) */

struct virtq_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

/* The tests never use more than this many entries per queue. */
#define VIRTQ_MAX	16

/*
 * The device-facing halves of a split virtqueue: the driver area (avail)
 * and the device area (used).  Sized at run time; the spec puts a u16
 * event field after each ring, which we leave alone (no EVENT_IDX).
 */
struct virtq_avail {
	u16 flags, idx, ring[];
};

struct virtq_used {
	u16 flags;
	volatile u16 idx;
	struct { u32 id, len; } ring[];
};

/*
 * The three parts of a split virtqueue of n entries, each aligned beyond
 * what the spec asks (16 for the table, 2 for the driver area, 4 for the
 * device area).  The device writes only the used ring.
 */
#define VIRTQ_LAYOUT(n) {						\
	struct virtq_desc desc[n];					\
	struct {							\
		u16 flags, idx, ring[n], used_event;			\
	} avail __attribute__((aligned(64)));				\
	struct {							\
		u16 flags;						\
		volatile u16 idx;					\
		struct { u32 id, len; } ring[n];			\
		u16 avail_event;					\
	} used __attribute__((aligned(64)));				\
} __attribute__((aligned(4096)))

struct virtq_mem VIRTQ_LAYOUT(VIRTQ_MAX);

struct virtq {
	u16 index, size;		/* queue number; entries in use */
	u16 next_avail, last_used;	/* our copies of avail.idx and used.idx */
	struct virtq_desc *desc;
	struct virtq_avail *avail;
	struct virtq_used *used;
	volatile u16 *notify;
};

struct virtio_dev {
	u8 devfn;
	volatile u8 *common, *isr, *config;
	volatile u8 *notify_base;
	u32 notify_mult;
	u8 msix_cap;			/* 0: no MSI-X capability */
	volatile u32 *msix_table;
	u64 offered, features;
};

/* A buffer for a request: guest-physical address, length, device-writable? */
struct vbuf {
	u64 addr;
	u32 len;
	bool write;
};

#define VIRTIO_NO_VECTOR	0xffff
#define VIRTIO_MSIX_VECTOR	0x30	/* IDT vector of MSI-X table entry 0 */

/* Incremented by the vector 0x30 handler. */
extern volatile unsigned virtio_msix_count;

/*
 * Legacy INTx, when MSI-X is off: the device's interrupt line (config
 * register 0x3c, as the VMM or firmware set it) through the 8259 PIC, on
 * vector 0x20 + line.  The handler reads the ISR byte, which also lowers
 * the line, and counts queue interrupts (ISR bit 0).
 */
extern volatile unsigned virtio_intx_count;
extern u8 virtio_intx_vector;		/* 0: no INTx handler */
bool virtio_intx_enable(struct virtio_dev *d);
void virtio_intx_disable(struct virtio_dev *d);
void virtio_intx_irq(void);

/*
 * The nth (from 0) virtio device of 'type' on bus 0: capabilities parsed,
 * BARs usable, memory space and bus mastering on, the device reset and its
 * feature bits read into d->offered.  False if there is no such device.
 */
bool virtio_probe(struct virtio_dev *d, u16 type, int nth);

/* Reset, ACKNOWLEDGE, DRIVER, features (VERSION_1 | (offered & wanted)),
 * FEATURES_OK.  'required' bits missing: prints why, returns false. */
bool virtio_negotiate(struct virtio_dev *d, u64 wanted, u64 required);

/* Queue 'index' on 'mem', at most VIRTQ_MAX entries; MSI-X table entry
 * 'vector' or VIRTIO_NO_VECTOR.  False (and a message) if it cannot. */
bool virtq_setup(struct virtio_dev *d, struct virtq *vq, u16 index,
		 struct virtq_mem *mem, u16 vector);

/* The same on rings of our own of 'limit' entries (a power of two);
 * virtq_setup_mem(d, vq, index, &m, n, vector) for a VIRTQ_LAYOUT(n) m. */
bool virtq_setup_rings(struct virtio_dev *d, struct virtq *vq, u16 index,
		       struct virtq_desc *desc, struct virtq_avail *avail,
		       struct virtq_used *used, u16 limit, u16 vector);
#define virtq_setup_mem(d, vq, index, m, n, vector)			\
	virtq_setup_rings(d, vq, index, (m)->desc,			\
			  (struct virtq_avail *)&(m)->avail,		\
			  (struct virtq_used *)&(m)->used, n, vector)

/* Program MSI-X table entry 0 for VIRTIO_MSIX_VECTOR and enable MSI-X. */
bool virtio_msix_enable(struct virtio_dev *d);

void virtio_driver_ok(struct virtio_dev *d);
void virtio_reset(struct virtio_dev *d);
u8 virtio_status(struct virtio_dev *d);

/* Chain bufs[0..n) into descriptors first.., offer the chain; submit
 * also notifies the device. */
void virtq_add(struct virtq *vq, u16 first, const struct vbuf *bufs, int n);
void virtq_submit(struct virtq *vq, u16 first, const struct vbuf *bufs, int n);
/* Offer an already built chain starting at descriptor 'head'; push also
 * notifies.  Offering many and notifying once saves exits. */
void virtq_offer(struct virtq *vq, u16 head);
void virtq_push(struct virtq *vq, u16 head);
void virtq_notify(struct virtq *vq);

#define VQ_DONE		0
#define VQ_NEEDS_RESET	1
#define VQ_TIMEOUT	(-1)

/*
 * Wait until the device returns a chain (VQ_DONE, with its head and used
 * length), sets DEVICE_NEEDS_RESET, or some seconds pass.  Interrupts are
 * let in for an instant each round, so an MSI-X interrupt is taken here.
 */
int virtq_wait(struct virtio_dev *d, struct virtq *vq, u32 *id, u32 *len);
/* Did a chain come back?  Non-blocking: true with id and len if so. */
bool virtq_poll(struct virtq *vq, u32 *id, u32 *len);

/*
 * Copy n bytes of device configuration from offset off, as one consistent
 * snapshot: the spec has the driver re-read when config_generation changed
 * in between (the device may update a field wider than one access, like
 * virtio-blk's 64-bit capacity, at any time).
 */
void virtio_cfg_read(struct virtio_dev *d, unsigned off, void *buf, unsigned n);

/* struct virtio_pci_common_cfg, by offset. */
#define CC_DFSELECT	0x00	/* le32 device_feature_select */
#define CC_DF		0x04	/* le32 device_feature */
#define CC_GFSELECT	0x08	/* le32 driver_feature_select */
#define CC_GF		0x0c	/* le32 driver_feature */
#define CC_MSIX		0x10	/* le16 config_msix_vector */
#define CC_NUMQ		0x12	/* le16 num_queues */
#define CC_STATUS	0x14	/* u8 device_status */
#define CC_GENERATION	0x15	/* u8 config_generation */
#define CC_Q_SELECT	0x16	/* le16 */
#define CC_Q_SIZE	0x18	/* le16 */
#define CC_Q_MSIX	0x1a	/* le16 */
#define CC_Q_ENABLE	0x1c	/* le16 */
#define CC_Q_NOFF	0x1e	/* le16 queue_notify_off */
#define CC_Q_DESCLO	0x20	/* le64 split in two le32s, low first */
#define CC_Q_DESCHI	0x24
#define CC_Q_AVAILLO	0x28
#define CC_Q_AVAILHI	0x2c
#define CC_Q_USEDLO	0x30
#define CC_Q_USEDHI	0x34

/* Common-configuration accesses: each one an MMIO exit to the VMM. */
static inline void cc_write8(struct virtio_dev *d, unsigned off, u8 v)
{
	d->common[off] = v;
}

static inline void cc_write16(struct virtio_dev *d, unsigned off, u16 v)
{
	*(volatile u16 *)(d->common + off) = v;
}

static inline void cc_write32(struct virtio_dev *d, unsigned off, u32 v)
{
	*(volatile u32 *)(d->common + off) = v;
}

static inline u16 cc_read16(struct virtio_dev *d, unsigned off)
{
	return *(volatile u16 *)(d->common + off);
}

static inline u32 cc_read32(struct virtio_dev *d, unsigned off)
{
	return *(volatile u32 *)(d->common + off);
}

/* Timing for the waits: the TSC, which the emulator can run. */
static inline u64 rdtsc(void)
{
	u32 lo, hi;

	asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return (u64)hi << 32 | lo;
}

#endif
