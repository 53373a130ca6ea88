/*
 * virtio.c: the virtio 1.x PCI transport and split virtqueues.
 *
 * A modern virtio PCI device describes itself with vendor-specific
 * capabilities (ID 0x09), each naming a BAR, an offset and a length: the
 * common configuration (status, features, queues), the notification area,
 * the ISR byte and the device-specific configuration.  Everything after the
 * capability walk is MMIO into those windows; each access is an exit to the
 * VMM, so we make few of them.
 */
#include "pci.h"
#include "pic.h"
#include "virtio.h"

/* struct virtio_pci_cap: cfg_type values. */
#define VIRTIO_PCI_CAP_COMMON	1
#define VIRTIO_PCI_CAP_NOTIFY	2
#define VIRTIO_PCI_CAP_ISR	3
#define VIRTIO_PCI_CAP_DEVICE	4

volatile unsigned virtio_msix_count;

u8 virtio_status(struct virtio_dev *d)
{
	return d->common[CC_STATUS];
}

/* The virtio type of a PCI function, or 0 if it is not a virtio device. */
static u16 virtio_type(const struct pci_dev *p)
{
	if (p->vendor != 0x1af4 || p->device < 0x1000 || p->device > 0x107f)
		return 0;
	return p->device >= 0x1040 ? p->device - 0x1040 : p->subsystem;
}

/*
 * Walk the capability list.  For each virtio structure we keep the first
 * capability of that type whose BAR we can use, as the spec recommends,
 * and we skip the types we do not know (the PCI configuration access
 * capability, shared memory, vendor data).
 */
static bool parse_caps(struct virtio_dev *d)
{
	u8 pos = 0, limit = 48;

	if (pci_read16(d->devfn, PCI_STATUS) & PCI_STATUS_CAP_LIST)
		pos = pci_read8(d->devfn, PCI_CAP_PTR) & 0xfc;
	for (; pos && limit; limit--) {
		u32 head = pci_read32(d->devfn, pos);	/* id, next, len, cfg_type */
		u8 id = head & 0xff, next = (head >> 8) & 0xfc, type = head >> 24;

		if (id == PCI_CAP_MSIX) {
			d->msix_cap = pos;
		} else if (id == PCI_CAP_VENDOR && type >= VIRTIO_PCI_CAP_COMMON &&
			   type <= VIRTIO_PCI_CAP_DEVICE) {
			u8 bar = pci_read8(d->devfn, pos + 4);
			u32 off = pci_read32(d->devfn, pos + 8);
			u64 base = bar <= 5 ? pci_bar_address(d->devfn, bar) : 0;
			volatile u8 *p = (volatile u8 *)(base + off);

			if (!base || base + off >= MAPPED_LIMIT)
				;		/* unusable: reserved BAR or no address */
			else if (type == VIRTIO_PCI_CAP_COMMON && !d->common)
				d->common = p;
			else if (type == VIRTIO_PCI_CAP_NOTIFY && !d->notify_base) {
				d->notify_base = p;
				d->notify_mult = pci_read32(d->devfn, pos + 16);
			} else if (type == VIRTIO_PCI_CAP_ISR && !d->isr)
				d->isr = p;
			else if (type == VIRTIO_PCI_CAP_DEVICE && !d->config)
				d->config = p;
		}
		pos = next;
	}
	if (!d->common || !d->notify_base || !d->isr) {
		print("virtio: device at 00:");
		print_hex(d->devfn >> 3);
		print(".");
		print_hex(d->devfn & 7);
		print(" lacks a common, notify or ISR capability\n");
		return false;
	}
	return true;
}

bool virtio_probe(struct virtio_dev *d, u16 type, int nth)
{
	const struct pci_dev *devs;
	int n = pci_devices(&devs);

	for (int i = 0; i < n; i++) {
		if (virtio_type(&devs[i]) != type || nth-- > 0)
			continue;
		memset(d, 0, sizeof(*d));
		d->devfn = devs[i].devfn;
		if (!parse_caps(d))
			return false;
		/* MMIO and DMA on, INTx off (we use MSI-X or poll). */
		pci_write16(d->devfn, PCI_COMMAND, PCI_CMD_MEMORY | PCI_CMD_MASTER |
			    PCI_CMD_INTX_DISABLE);
		virtio_reset(d);
		cc_write32(d, CC_DFSELECT, 0);
		d->offered = cc_read32(d, CC_DF);
		cc_write32(d, CC_DFSELECT, 1);
		d->offered |= (u64)cc_read32(d, CC_DF) << 32;
		return true;
	}
	return false;
}

/*
 * Writing 0 resets the device; the spec has the driver wait until it reads
 * back 0, since a device may take a while to finish outstanding requests.
 */
void virtio_reset(struct virtio_dev *d)
{
	u64 deadline;

	cc_write8(d, CC_STATUS, 0);
	for (deadline = rdtsc() + (1ULL << 33);
	     d->common[CC_STATUS] && rdtsc() < deadline;)
		asm volatile("pause");
}

bool virtio_negotiate(struct virtio_dev *d, u64 wanted, u64 required)
{
	u64 missing = (required | VIRTIO_F_VERSION_1) & ~d->offered;

	virtio_reset(d);
	cc_write8(d, CC_STATUS, VIRTIO_ACKNOWLEDGE);
	cc_write8(d, CC_STATUS, VIRTIO_ACKNOWLEDGE | VIRTIO_DRIVER);
	if (missing) {
		/* Legacy-only devices land here too: they lack VERSION_1. */
		cc_write8(d, CC_STATUS, VIRTIO_ACKNOWLEDGE | VIRTIO_DRIVER | VIRTIO_FAILED);
		print("virtio: device lacks required features 0x");
		print_hex(missing);
		print("\n");
		return false;
	}
	d->features = d->offered & (wanted | required | VIRTIO_F_VERSION_1);
	cc_write32(d, CC_GFSELECT, 0);
	cc_write32(d, CC_GF, (u32)d->features);
	cc_write32(d, CC_GFSELECT, 1);
	cc_write32(d, CC_GF, d->features >> 32);
	cc_write8(d, CC_STATUS, VIRTIO_ACKNOWLEDGE | VIRTIO_DRIVER | VIRTIO_FEATURES_OK);
	if (!(d->common[CC_STATUS] & VIRTIO_FEATURES_OK)) {
		cc_write8(d, CC_STATUS, VIRTIO_ACKNOWLEDGE | VIRTIO_DRIVER | VIRTIO_FAILED);
		print("virtio: device refused FEATURES_OK for features 0x");
		print_hex(d->features);
		print("\n");
		return false;
	}
	return true;
}

/*
 * The queue size we use is the device's maximum capped at our limit; both
 * are powers of two, as a split queue's size must be.
 */
bool virtq_setup(struct virtio_dev *d, struct virtq *vq, u16 index,
		 struct virtq_mem *mem, u16 vector)
{
	return virtq_setup_mem(d, vq, index, mem, VIRTQ_MAX, vector);
}

bool virtq_setup_rings(struct virtio_dev *d, struct virtq *vq, u16 index,
		       struct virtq_desc *descs, struct virtq_avail *avails,
		       struct virtq_used *useds, u16 limit, u16 vector)
{
	u16 max, size = limit;
	u64 desc = (u64)descs, avail = (u64)avails, used = (u64)useds;

	cc_write16(d, CC_Q_SELECT, index);
	max = cc_read16(d, CC_Q_SIZE);
	if (max == 0 || (max & (max - 1))) {
		print("virtio: queue ");
		print_dec(index);
		print(max ? " size is not a power of two: " : " does not exist: size ");
		print_dec(max);
		print("\n");
		return false;
	}
	while (size > max)
		size >>= 1;
	memset(descs, 0, size * sizeof(*descs));
	memset(avails, 0, 6 + 2 * size);
	memset(useds, 0, 6 + 8 * size);
	vq->index = index;
	vq->size = size;
	vq->next_avail = vq->last_used = 0;
	vq->desc = descs;
	vq->avail = avails;
	vq->used = useds;
	vq->notify = (volatile u16 *)(d->notify_base +
				      cc_read16(d, CC_Q_NOFF) * d->notify_mult);
	cc_write16(d, CC_Q_SIZE, size);
	cc_write32(d, CC_Q_DESCLO, (u32)desc);
	cc_write32(d, CC_Q_DESCHI, desc >> 32);
	cc_write32(d, CC_Q_AVAILLO, (u32)avail);
	cc_write32(d, CC_Q_AVAILHI, avail >> 32);
	cc_write32(d, CC_Q_USEDLO, (u32)used);
	cc_write32(d, CC_Q_USEDHI, used >> 32);
	if (vector != VIRTIO_NO_VECTOR) {
		cc_write16(d, CC_Q_MSIX, vector);
		if (cc_read16(d, CC_Q_MSIX) != vector) {
			print("virtio: device refused MSI-X vector for queue ");
			print_dec(index);
			print("\n");
			return false;
		}
	}
	cc_write16(d, CC_Q_ENABLE, 1);
	return true;
}

/*
 * MSI-X: table entry 0 gets the local APIC's address (0xfee00000: fixed
 * delivery, physical destination APIC 0) and our vector as data, unmasked;
 * then the Enable bit in Message Control, with Function Mask clear.
 * Configuration changes get no vector.
 */
bool virtio_msix_enable(struct virtio_dev *d)
{
	u32 table;
	u64 bar;
	u16 ctrl;

	if (!d->msix_cap)
		return false;
	table = pci_read32(d->devfn, d->msix_cap + 4);
	bar = pci_bar_address(d->devfn, table & 7);
	if (!bar)
		return false;
	d->msix_table = (volatile u32 *)(bar + (table & ~7u));
	d->msix_table[0] = 0xfee00000;
	d->msix_table[1] = 0;
	d->msix_table[2] = VIRTIO_MSIX_VECTOR;
	d->msix_table[3] = 0;
	ctrl = pci_read16(d->devfn, d->msix_cap + 2);
	pci_write16(d->devfn, d->msix_cap + 2, (ctrl | 0x8000) & ~0x4000);
	cc_write16(d, CC_MSIX, VIRTIO_NO_VECTOR);
	return true;
}

/*
 * The spec fixes the access width: 32-bit (aligned) accesses for 32- and
 * 64-bit fields, byte accesses for byte fields (like a MAC address).  So a
 * 4-aligned read of a multiple of 4 bytes goes in dwords, anything else in
 * bytes.
 */
void virtio_cfg_read(struct virtio_dev *d, unsigned off, void *buf, unsigned n)
{
	bool dwords = !(off & 3) && !(n & 3);
	u8 gen;

	if (!d->config) {
		print("virtio: no device configuration capability\n");
		memset(buf, 0, n);
		return;
	}
	do {
		gen = d->common[CC_GENERATION];
		for (unsigned i = 0; i < n; i += dwords ? 4 : 1) {
			if (dwords)
				*(u32 *)((u8 *)buf + i) = *(volatile u32 *)(d->config + off + i);
			else
				((u8 *)buf)[i] = d->config[off + i];
		}
	} while (d->common[CC_GENERATION] != gen);
}

volatile unsigned virtio_intx_count;
u8 virtio_intx_vector;
static volatile u8 *intx_isr;

/*
 * Lines 1-15 only: those are the PIC's (a line of 0 or 0xff means "none",
 * and higher ones would need the IOAPIC).  IRQ 8-15 sit on the slave PIC,
 * which reaches the CPU through the master's IRQ 2.
 */
bool virtio_intx_enable(struct virtio_dev *d)
{
	u8 line = pci_read8(d->devfn, PCI_INTERRUPT_LINE);

	if (line == 0 || line >= 16) {
		print("virtio: interrupt line ");
		print_dec(line);
		print(" is not a PIC IRQ\n");
		return false;
	}
	intx_isr = d->isr;
	virtio_intx_vector = IRQ_BASE + line;
	if (line < 8) {
		pic_setup((u8)~(1 << line));
	} else {
		pic_setup((u8)~(1 << 2));
		pic_set_slave_mask((u8)~(1 << (line - 8)));
	}
	pci_write16(d->devfn, PCI_COMMAND, PCI_CMD_MEMORY | PCI_CMD_MASTER);
	return true;
}

void virtio_intx_disable(struct virtio_dev *d)
{
	pci_write16(d->devfn, PCI_COMMAND, PCI_CMD_MEMORY | PCI_CMD_MASTER |
		    PCI_CMD_INTX_DISABLE);
	pic_mask_all();
	pic_set_slave_mask(0xff);
	virtio_intx_vector = 0;
}

void virtio_intx_irq(void)
{
	if (*intx_isr & 1)
		virtio_intx_count++;
}

void virtio_driver_ok(struct virtio_dev *d)
{
	cc_write8(d, CC_STATUS, VIRTIO_ACKNOWLEDGE | VIRTIO_DRIVER |
		  VIRTIO_FEATURES_OK | VIRTIO_DRIVER_OK);
}

/*
 * Offering a chain: the head goes into the next avail ring slot, and only
 * then is avail.idx bumped, so the device never sees an index that covers
 * a slot not yet written.  x86 keeps stores in order; the compiler barrier
 * keeps gcc from reordering them.
 */
void virtq_offer(struct virtq *vq, u16 head)
{
	vq->avail->ring[vq->next_avail & (vq->size - 1)] = head;
	asm volatile("" : : : "memory");
	vq->avail->idx = ++vq->next_avail;
	asm volatile("" : : : "memory");
}

/* The notification: a 16-bit write of the queue number to this queue's
 * notify address (we do not negotiate NOTIFICATION_DATA). */
void virtq_notify(struct virtq *vq)
{
	*vq->notify = vq->index;
}

void virtq_push(struct virtq *vq, u16 head)
{
	virtq_offer(vq, head);
	virtq_notify(vq);
}

void virtq_add(struct virtq *vq, u16 first, const struct vbuf *bufs, int n)
{
	struct virtq_desc *desc = vq->desc;

	for (int i = 0; i < n; i++) {
		struct virtq_desc *dd = &desc[first + i];

		dd->addr = bufs[i].addr;
		dd->len = bufs[i].len;
		dd->flags = (bufs[i].write ? VIRTQ_DESC_F_WRITE : 0) |
			    (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0);
		dd->next = i + 1 < n ? first + i + 1 : 0;
	}
	virtq_offer(vq, first);
}

void virtq_submit(struct virtq *vq, u16 first, const struct vbuf *bufs, int n)
{
	virtq_add(vq, first, bufs, n);
	virtq_notify(vq);
}

bool virtq_poll(struct virtq *vq, u32 *id, u32 *len)
{
	u16 slot;

	if (vq->used->idx == vq->last_used)
		return false;
	/* Read the entry only after seeing the index that covers it. */
	asm volatile("" : : : "memory");
	slot = vq->last_used++ & (vq->size - 1);
	*id = vq->used->ring[slot].id;
	*len = vq->used->ring[slot].len;
	return true;
}

/*
 * Polling with a deadline of about 2^34 TSC ticks (some seconds at any
 * plausible TSC rate), reading device_status (an exit) only every 1024
 * polls.  Under MSI-X we let interrupts in for one instruction per round,
 * so the interrupt that goes with a completion is taken right here.
 */
int virtq_wait(struct virtio_dev *d, struct virtq *vq, u32 *id, u32 *len)
{
	u64 deadline = rdtsc() + (1ULL << 34);

	for (unsigned i = 1;; i++) {
		if (virtq_poll(vq, id, len))
			return VQ_DONE;
		if (!(i & 1023)) {
			if (virtio_status(d) & VIRTIO_NEEDS_RESET)
				return VQ_NEEDS_RESET;
			if (rdtsc() > deadline)
				return VQ_TIMEOUT;
		}
		asm volatile("sti; nop; cli; pause" : : : "memory");
	}
}
