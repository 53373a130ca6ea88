/*
 * virtio_tests.c: test=blk, test=blk-ro, test=rng and test=virtio-abuse.
 * Each check prints "PASS <name>" or "FAIL <name>: <why>" (see README.md
 * for the list and for the pattern the host puts on the disk).
 */
#include "check.h"
#include "pci.h"
#include "pic.h"
#include "smp.h"
#include "virtio.h"
#include "virtio_tests.h"

/* Queue memory and request buffers, shared by the tests (one at a time). */
static struct virtq_mem qmem[2];
static struct virtq vq;
static struct virtio_dev dev;

#define VIRTIO_BLK_F_RO		(1ULL << 5)
#define VIRTIO_BLK_F_FLUSH	(1ULL << 9)

#define VIRTIO_BLK_T_IN		0
#define VIRTIO_BLK_T_OUT	1
#define VIRTIO_BLK_T_FLUSH	4
#define VIRTIO_BLK_T_GET_ID	8

#define VIRTIO_BLK_S_OK		0
#define VIRTIO_BLK_S_IOERR	1
#define VIRTIO_BLK_S_UNSUPP	2

/* Our own codes for a request that never completed. */
#define BLK_NEEDS_RESET		(-1)
#define BLK_TIMEOUT		(-2)

#define SECTOR	512

static struct {
	u32 type, reserved;
	u64 sector;
} blk_hdr;
static volatile u8 blk_status;
static u8 blk_buf[8 * SECTOR] __attribute__((aligned(4096)));

/* P(s, i) of README.md; the write pattern is its complement. */
static inline u8 pattern(u64 s, unsigned i)
{
	return (u8)(i + 31 * s + (s >> 8));
}

static void fill(u8 *buf, u64 first, unsigned n, u8 flip)
{
	for (unsigned s = 0; s < n; s++)
		for (unsigned i = 0; i < SECTOR; i++)
			*buf++ = pattern(first + s, i) ^ flip;
}

/* -1 if buf holds sectors first..first+n-1 of the pattern, else the byte
 * offset of the first difference. */
static long differs(const u8 *buf, u64 first, unsigned n, u8 flip)
{
	for (unsigned s = 0; s < n; s++)
		for (unsigned i = 0; i < SECTOR; i++, buf++)
			if (*buf != (u8)(pattern(first + s, i) ^ flip))
				return s * SECTOR + i;
	return -1;
}

static const char *outcome_name(int r)
{
	return r == VQ_NEEDS_RESET ? "device set DEVICE_NEEDS_RESET" :
	       "no answer within the deadline";
}

/*
 * One virtio-blk request: header (device-readable), 'len' bytes of data
 * at 'buf' (split over two descriptors if 'split'), status byte
 * (device-writable).  Returns the status byte, or BLK_NEEDS_RESET or
 * BLK_TIMEOUT.
 */
static int blk_request(u32 type, u64 sector, void *buf, u32 len, bool split)
{
	struct vbuf b[4];
	int n = 0, r;
	u32 id, used;
	bool in = type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID;

	blk_hdr.type = type;
	blk_hdr.reserved = 0;
	blk_hdr.sector = sector;
	blk_status = 0xff;
	b[n++] = (struct vbuf){ (u64)&blk_hdr, sizeof(blk_hdr), false };
	if (len && split) {
		b[n++] = (struct vbuf){ (u64)buf, len / 2, in };
		b[n++] = (struct vbuf){ (u64)buf + len / 2, len - len / 2, in };
	} else if (len) {
		b[n++] = (struct vbuf){ (u64)buf, len, in };
	}
	b[n++] = (struct vbuf){ (u64)&blk_status, 1, true };
	virtq_submit(&vq, 0, b, n);
	r = virtq_wait(&dev, &vq, &id, &used);
	if (r == VQ_DONE)
		return blk_status;
	return r == VQ_NEEDS_RESET ? BLK_NEEDS_RESET : BLK_TIMEOUT;
}

static void check_status(const char *name, int st, int want)
{
	if (st < 0)
		check(name, false, outcome_name(st == BLK_NEEDS_RESET ? VQ_NEEDS_RESET :
						       VQ_TIMEOUT), 0);
	else
		check(name, st == want, "request status ", st);
}

/*
 * The device up to DRIVER_OK with queue 0, interrupting through MSI-X table
 * entry 0 (IRQ_MSIX), its INTx line (IRQ_INTX), or not at all.  Returns the
 * interrupt it really got, or -1 on failure.
 */
enum { IRQ_NONE, IRQ_MSIX, IRQ_INTX };

static int blk_start(u64 wanted, int irq)
{
	u16 vector = VIRTIO_NO_VECTOR;

	if (!virtio_negotiate(&dev, wanted, 0))
		return -1;
	if (irq == IRQ_MSIX) {
		if (virtio_msix_enable(&dev))
			vector = 0;
		else
			irq = IRQ_INTX;		/* no MSI-X capability: INTx it is */
	}
	if (irq == IRQ_INTX && !virtio_intx_enable(&dev))
		irq = IRQ_NONE;
	if (!virtq_setup(&dev, &vq, 0, &qmem[0], vector))
		return -1;
	virtio_driver_ok(&dev);
	return irq;
}

/* struct virtio_blk_config starts with le64 capacity, in 512-byte sectors. */
static u64 blk_capacity(void)
{
	u64 cap = 0;

	virtio_cfg_read(&dev, 0, &cap, sizeof(cap));
	return cap;
}

/* The nth blk device with (ro) or without VIRTIO_BLK_F_RO; false if none. */
static bool find_blk(bool ro)
{
	/* Interrupts come in through our sti windows while we wait: the PIC
	 * must be off its power-on vectors (and masked), the local APIC on. */
	pic_setup(0xff);
	for (int i = 0; virtio_probe(&dev, VIRTIO_ID_BLK, i); i++)
		if (!!(dev.offered & VIRTIO_BLK_F_RO) == ro)
			return true;
	return false;
}

bool virtio_msix_off;

int test_blk(void)
{
	u64 cap;
	long bad;
	int st, irq;
	unsigned before;
	volatile unsigned *count;
	const char *irq_check;

	check_failures = 0;
	if (!find_blk(false)) {
		print("FAIL blk: no writable virtio-blk device\n");
		return 1;
	}
	irq = blk_start(VIRTIO_BLK_F_FLUSH, virtio_msix_off ? IRQ_INTX : IRQ_MSIX);
	if (irq < 0) {
		check("blk-init", false, "device status 0x", virtio_status(&dev));
		virtio_reset(&dev);
		return check_failures;
	}
	cap = blk_capacity();
	check("blk-init", cap >= 16, "capacity (sectors) below 16: ", cap);
	print("blk: capacity ");
	print_dec(cap);
	print(" sectors\n");

	/* Sectors 0-7 in one request, completed with an interrupt. */
	count = irq == IRQ_MSIX ? &virtio_msix_count : &virtio_intx_count;
	irq_check = irq == IRQ_MSIX ? "blk-msix" : "blk-intx";
	before = *count;
	memset(blk_buf, 0, sizeof(blk_buf));
	st = blk_request(VIRTIO_BLK_T_IN, 0, blk_buf, 8 * SECTOR, true);
	/* The device thread raises the interrupt after it fills the used ring,
	 * and on a loaded host it can be descheduled in between: wait on the
	 * clock (about 2^33 TSC ticks), not on a loop count. */
	for (u64 deadline = rdtsc() + (1ULL << 33);
	     irq != IRQ_NONE && *count == before && rdtsc() < deadline;)
		asm volatile("sti; nop; cli; pause" : : : "memory");
	if (st != VIRTIO_BLK_S_OK)
		check_status(irq_check, st, VIRTIO_BLK_S_OK);
	else if (irq == IRQ_NONE)
		check(irq_check, false, "neither MSI-X nor a usable INTx line, interrupt line ",
		      pci_read8(dev.devfn, PCI_INTERRUPT_LINE));
	else
		check(irq_check, *count != before, "request done, but no interrupt on vector 0x",
		      irq == IRQ_MSIX ? VIRTIO_MSIX_VECTOR : virtio_intx_vector);
	if (irq == IRQ_INTX)
		virtio_intx_disable(&dev);
	bad = differs(blk_buf, 0, 8, 0);
	check("blk-read", st == VIRTIO_BLK_S_OK && bad < 0,
	      "first wrong byte at offset ", bad);

	st = blk_request(VIRTIO_BLK_T_IN, cap - 1, blk_buf, SECTOR, false);
	bad = differs(blk_buf, cap - 1, 1, 0);
	if (st != VIRTIO_BLK_S_OK)
		check_status("blk-read-last", st, VIRTIO_BLK_S_OK);
	else
		check("blk-read-last", bad < 0, "first wrong byte at offset ", bad);

	fill(blk_buf, 2, 2, 0xff);
	st = blk_request(VIRTIO_BLK_T_OUT, 2, blk_buf, 2 * SECTOR, false);
	check_status("blk-write", st, VIRTIO_BLK_S_OK);
	memset(blk_buf, 0, 2 * SECTOR);
	st = blk_request(VIRTIO_BLK_T_IN, 2, blk_buf, 2 * SECTOR, false);
	bad = differs(blk_buf, 2, 2, 0xff);
	if (st != VIRTIO_BLK_S_OK)
		check_status("blk-readback", st, VIRTIO_BLK_S_OK);
	else
		check("blk-readback", bad < 0, "first wrong byte at offset ", bad);

	if (!(dev.features & VIRTIO_BLK_F_FLUSH))
		check("blk-flush", false, "VIRTIO_BLK_F_FLUSH not offered, features 0x",
		      dev.offered);
	else
		check_status("blk-flush", blk_request(VIRTIO_BLK_T_FLUSH, 0, 0, 0, false),
			     VIRTIO_BLK_S_OK);

	/* The ID is up to 20 bytes, NUL-terminated only if shorter. */
	memset(blk_buf, 0, 21);
	st = blk_request(VIRTIO_BLK_T_GET_ID, 0, blk_buf, 20, false);
	check_status("blk-get-id", st, VIRTIO_BLK_S_OK);
	if (st == VIRTIO_BLK_S_OK) {
		print("blk: id '");
		print((const char *)blk_buf);
		print("'\n");
	}
	virtio_reset(&dev);
	return check_failures;
}

int test_blk_ro(void)
{
	long bad;
	int st;

	check_failures = 0;
	if (!find_blk(true)) {
		check("blk-ro-feature", false, "no virtio-blk device offers VIRTIO_BLK_F_RO, found ",
		      virtio_probe(&dev, VIRTIO_ID_BLK, 0) ? 1 : 0);
		return check_failures;
	}
	if (blk_start(VIRTIO_BLK_F_RO, IRQ_NONE) < 0) {
		check("blk-ro-feature", false, "device status 0x", virtio_status(&dev));
		virtio_reset(&dev);
		return check_failures;
	}
	check("blk-ro-feature", true, "", 0);

	st = blk_request(VIRTIO_BLK_T_IN, 0, blk_buf, SECTOR, false);
	bad = differs(blk_buf, 0, 1, 0);
	if (st != VIRTIO_BLK_S_OK)
		check_status("blk-ro-read", st, VIRTIO_BLK_S_OK);
	else
		check("blk-ro-read", bad < 0, "first wrong byte at offset ", bad);

	fill(blk_buf, 1, 1, 0xff);
	check_status("blk-ro-write", blk_request(VIRTIO_BLK_T_OUT, 1, blk_buf, SECTOR, false),
		     VIRTIO_BLK_S_IOERR);

	memset(blk_buf, 0, SECTOR);
	st = blk_request(VIRTIO_BLK_T_IN, 1, blk_buf, SECTOR, false);
	bad = differs(blk_buf, 1, 1, 0);
	if (st != VIRTIO_BLK_S_OK)
		check_status("blk-ro-unchanged", st, VIRTIO_BLK_S_OK);
	else
		check("blk-ro-unchanged", bad < 0, "first wrong byte at offset ", bad);
	virtio_reset(&dev);
	return check_failures;
}

/* Two 64-byte requests: some bytes back each time, not all zero, not equal. */
int test_rng(void)
{
	static u8 r1[64], r2[64];
	u8 *bufs[2] = { r1, r2 };
	u32 id, len[2] = { 0, 0 };
	bool nonzero = false;
	int r = VQ_DONE;

	check_failures = 0;
	pic_setup(0xff);
	if (!virtio_probe(&dev, VIRTIO_ID_RNG, 0)) {
		print("FAIL rng: no virtio-rng device\n");
		return 1;
	}
	if (!virtio_negotiate(&dev, 0, 0) || !virtq_setup(&dev, &vq, 0, &qmem[0], VIRTIO_NO_VECTOR)) {
		check("rng-read", false, "device set-up failed, status 0x", virtio_status(&dev));
		virtio_reset(&dev);
		return check_failures;
	}
	virtio_driver_ok(&dev);
	for (int i = 0; i < 2 && r == VQ_DONE; i++) {
		struct vbuf b = { (u64)bufs[i], 64, true };

		virtq_submit(&vq, 0, &b, 1);
		r = virtq_wait(&dev, &vq, &id, &len[i]);
	}
	for (int i = 0; i < 64; i++)
		nonzero |= r1[i] != 0;
	if (r != VQ_DONE)
		check("rng-read", false, outcome_name(r), 0);
	else if (len[0] == 0 || len[0] > 64 || len[1] == 0 || len[1] > 64)
		check("rng-read", false, "used lengths 0x", (long)len[0] << 32 | len[1]);
	else
		check("rng-read", nonzero && memcmp(r1, r2, len[0] < len[1] ? len[0] : len[1]),
		      "all zero or repeated, first byte 0x", r1[0]);
	virtio_reset(&dev);
	return check_failures;
}

/*
 * test=virtio-abuse (with --rng, for a second device to collide with).
 * Each case builds its descriptors by hand.  A device
 * may answer a malformed chain with an error status or by setting
 * DEVICE_NEEDS_RESET; what it must not do is claim success, write into a
 * buffer the driver marked device-readable, or stop answering.
 */
enum abuse_case { OUTSIDE_RAM, LOOP, OVERSIZED, PAST_END, RO_STATUS, HYPERCALL_PAGE, PCI_HOLE };

static const struct {
	const char *name, *what;
} abuse_cases[] = {
	[OUTSIDE_RAM] = { "abuse-outside-ram", "data buffer at 1 TiB" },
	[LOOP] = { "abuse-loop", "looped descriptor chain" },
	[OVERSIZED] = { "abuse-oversized", "data descriptor of 0xfffff000 bytes" },
	[PAST_END] = { "abuse-past-end", "read of sector <capacity>" },
	[RO_STATUS] = { "abuse-ro-status", "device-readable status byte" },
	[HYPERCALL_PAGE] = { "abuse-hypercall-page", "read into the hypercall page at 0x2000" },
	[PCI_HOLE] = { "abuse-pci-hole", "read into the PCI hole at 0xc0000000" },
};

/* The hypercall page is RAM the guest may read but no one may write, device DMA included. */
static u32 hypercall_page_sum(void)
{
	const u8 *p = (const u8 *)0x2000;
	u32 sum = 0;

	for (int i = 0; i < 4096; i++)
		sum = sum * 31 + p[i];
	return sum;
}

static void abuse(enum abuse_case c)
{
	const char *name = abuse_cases[c].name;
	struct virtq_desc *d = qmem[0].desc;
	u32 id, len;
	int r;

	if (blk_start(0, IRQ_NONE) < 0) {
		check(name, false, "device set-up failed, status 0x", virtio_status(&dev));
		virtio_reset(&dev);
		return;
	}
	/* A good read of sector 0 (header, data, status), then the damage. */
	blk_hdr.type = VIRTIO_BLK_T_IN;
	blk_hdr.reserved = 0;
	blk_hdr.sector = c == PAST_END ? blk_capacity() : 0;
	blk_status = 0xff;
	d[0] = (struct virtq_desc){ (u64)&blk_hdr, sizeof(blk_hdr), VIRTQ_DESC_F_NEXT, 1 };
	d[1] = (struct virtq_desc){ (u64)blk_buf, SECTOR, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2 };
	d[2] = (struct virtq_desc){ (u64)&blk_status, 1, VIRTQ_DESC_F_WRITE, 0 };
	if (c == OUTSIDE_RAM) {
		d[1].addr = 1ULL << 40;
	} else if (c == LOOP) {
		/* header -> data 1 -> data 2 -> data 1 -> ... */
		d[1].len = SECTOR / 2;
		d[2] = (struct virtq_desc){ (u64)blk_buf + SECTOR / 2, SECTOR / 2,
					    VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1 };
	} else if (c == OVERSIZED) {
		d[1].len = 0xfffff000;
	} else if (c == RO_STATUS) {
		d[2].flags = 0;
	} else if (c == HYPERCALL_PAGE) {
		d[1].addr = 0x2000;
	} else if (c == PCI_HOLE) {
		d[1].addr = 0xc0000000ULL;
	}
	u32 page_before = hypercall_page_sum();
	virtq_push(&vq, 0);
	r = virtq_wait(&dev, &vq, &id, &len);

	print("abuse: ");
	print(abuse_cases[c].what);
	print(": ");
	if (r == VQ_DONE) {
		print("status ");
		print_dec(blk_status);
		print(", used length ");
		print_dec(len);
		print("\n");
	} else {
		print(r == VQ_NEEDS_RESET ? "DEVICE_NEEDS_RESET\n" : "no answer\n");
	}

	if (r == VQ_TIMEOUT)
		check(name, false, outcome_name(r), 0);
	else if (r == VQ_NEEDS_RESET)
		check(name, c != PAST_END, "wanted VIRTIO_BLK_S_IOERR, got DEVICE_NEEDS_RESET", 0);
	else if (c == RO_STATUS)
		check(name, blk_status == 0xff, "device wrote into a device-readable buffer: 0x",
		      blk_status);
	else if (c == HYPERCALL_PAGE && hypercall_page_sum() != page_before)
		check(name, false, "the device wrote into the hypercall page", 0);
	else if (c == PAST_END)
		check(name, blk_status == VIRTIO_BLK_S_IOERR, "request status ", blk_status);
	else
		check(name, blk_status == VIRTIO_BLK_S_IOERR || blk_status == VIRTIO_BLK_S_UNSUPP,
		      "request status ", blk_status);
	virtio_reset(&dev);
}

/* After the damage: a fresh set-up and a read of sector 0 work, with the right bytes. */
static void check_recovered(const char *name)
{
	long bad;
	int st;

	if (blk_start(0, IRQ_NONE) < 0) {
		check(name, false, "device set-up failed, status 0x", virtio_status(&dev));
	} else {
		memset(blk_buf, 0, SECTOR);
		st = blk_request(VIRTIO_BLK_T_IN, 0, blk_buf, SECTOR, false);
		bad = differs(blk_buf, 0, 1, 0);
		if (st != VIRTIO_BLK_S_OK)
			check_status(name, st, VIRTIO_BLK_S_OK);
		else
			check(name, bad < 0, "first wrong byte at offset ", bad);
	}
	virtio_reset(&dev);
}

/*
 * A queue vector the function's MSI-X table does not have: the device must
 * read it back as NO_VECTOR (virtio 1.2, 4.1.4.3.2), so a driver knows the
 * mapping failed rather than wait for interrupts that never come.
 */
static void abuse_msix_vector(void)
{
	u16 got;

	if (blk_start(0, IRQ_NONE) < 0) {
		check("abuse-msix-vector", false, "device set-up failed, status 0x", virtio_status(&dev));
		virtio_reset(&dev);
		return;
	}
	cc_write16(&dev, CC_Q_SELECT, 0);
	cc_write16(&dev, CC_Q_MSIX, 0x55);
	got = cc_read16(&dev, CC_Q_MSIX);
	print("abuse: queue vector 0x55 (the table has 2): reads back 0x");
	print_hex(got);
	print("\n");
	check("abuse-msix-vector", got == VIRTIO_NO_VECTOR, "read back 0x", got);
	virtio_reset(&dev);
}

/*
 * Move the disk's BAR 0 onto the entropy device's, a hundred times, with
 * memory decoding on (as a buggy or hostile driver might), then back.  The
 * disk's doorbells cannot go where the other device's already are: the VMM
 * must refuse that without leaving either device's doorbells half attached,
 * and say so once, not a hundred times.  Afterwards both devices still work.
 */
static void abuse_bar_overlap(void)
{
	static struct virtio_dev rng;
	static struct virtq rng_vq;
	static u8 bytes[32];
	u32 mine_lo = pci_read32(dev.devfn, PCI_BAR0), mine_hi = pci_read32(dev.devfn, PCI_BAR0 + 4);
	u32 theirs_lo, theirs_hi, id, len = 0;
	int r;

	if (!virtio_probe(&rng, VIRTIO_ID_RNG, 0)) {
		check("abuse-bar-overlap", false, "no virtio-rng device to collide with (--rng)", 0);
		return;
	}
	theirs_lo = pci_read32(rng.devfn, PCI_BAR0);
	theirs_hi = pci_read32(rng.devfn, PCI_BAR0 + 4);
	for (int i = 0; i < 100; i++) {
		pci_write32(dev.devfn, PCI_BAR0, theirs_lo);
		pci_write32(dev.devfn, PCI_BAR0 + 4, theirs_hi);
		pci_write32(dev.devfn, PCI_BAR0, mine_lo);
		pci_write32(dev.devfn, PCI_BAR0 + 4, mine_hi);
	}
	print("abuse: the disk's BAR 0 moved onto the entropy device's 100 times, and back\n");

	if (!virtio_negotiate(&rng, 0, 0) || !virtq_setup(&rng, &rng_vq, 0, &qmem[1], VIRTIO_NO_VECTOR)) {
		check("abuse-bar-overlap", false, "entropy device set-up failed, status 0x", virtio_status(&rng));
	} else {
		struct vbuf b = { (u64)bytes, sizeof(bytes), true };

		virtio_driver_ok(&rng);
		virtq_submit(&rng_vq, 0, &b, 1);
		r = virtq_wait(&rng, &rng_vq, &id, &len);
		if (r != VQ_DONE)
			check("abuse-bar-overlap", false, outcome_name(r), 0);
		else
			check("abuse-bar-overlap", len > 0 && len <= sizeof(bytes), "entropy used length ", len);
	}
	virtio_reset(&rng);
}

int test_virtio_abuse(void)
{
	check_failures = 0;
	if (!find_blk(false)) {
		print("FAIL virtio-abuse: no writable virtio-blk device\n");
		return 1;
	}
	for (int c = OUTSIDE_RAM; c <= PCI_HOLE; c++)
		abuse(c);
	abuse_msix_vector();
	abuse_bar_overlap();

	check_recovered("abuse-recovered");
	return check_failures;
}

/*
 * test=virtio-race (swiftvmm --cpus 2): one vCPU sets queue 0 up and enables
 * it, over and over, while the other resets the device, over and over; the
 * VMM handles each write on the thread of the vCPU that made it.  It must
 * neither crash nor deadlock, and afterwards a reset must still mean reset:
 * the driver sets the device up without enabling queue 0, posts a request
 * on the rings the race used and rings the doorbell, and the device must not
 * touch it.  (Whether enable and reset are each one step, so that no reset
 * can land between queue_enable and the ring going live, is checked where
 * the interleaving can be watched: VirtioSeamTests, two host threads.)
 */
#define RACE_ROUNDS	3000

static volatile bool race_go, race_done;

/* On the second vCPU. */
static void race_enabler(void)
{
	u64 rings[3] = { (u64)qmem[0].desc, (u64)&qmem[0].avail, (u64)&qmem[0].used };

	while (!race_go)
		asm volatile("pause");
	for (int i = 0; i < RACE_ROUNDS; i++) {
		cc_write16(&dev, CC_Q_SELECT, 0);
		cc_write16(&dev, CC_Q_SIZE, 8);
		for (int r = 0; r < 3; r++) {		/* descriptors, driver and device areas */
			cc_write32(&dev, CC_Q_DESCLO + 8 * r, (u32)rings[r]);
			cc_write32(&dev, CC_Q_DESCHI + 8 * r, (u32)(rings[r] >> 32));
		}
		cc_write16(&dev, CC_Q_ENABLE, 1);
	}
	race_done = true;
}

int test_virtio_race(void)
{
	struct virtq_desc *d = qmem[0].desc;
	volatile u16 *notify;
	u16 used_before;

	check_failures = 0;
	if (!find_blk(false)) {
		print("FAIL virtio-race: no writable virtio-blk device\n");
		return 1;
	}
	virtio_reset(&dev);
	memset(&qmem[0], 0, sizeof(qmem[0]));
	if (!smp_start_ap(race_enabler)) {
		check("race-second-vcpu", false, "the second vCPU did not start (run with --cpus 2)", 0);
		return check_failures;
	}
	print("PASS race-second-vcpu\n");
	race_go = true;
	for (int i = 0; i < RACE_ROUNDS; i++)
		cc_write8(&dev, CC_STATUS, 0);		/* reset, without waiting */
	for (u64 end = rdtsc() + (1ULL << 34); !race_done && rdtsc() < end;)
		asm volatile("pause");
	check("race-rounds", race_done, "the second vCPU did not finish its rounds", 0);
	print("race: 3000 enables on one vCPU against 3000 resets on the other\n");

	virtio_reset(&dev);
	if (!virtio_negotiate(&dev, 0, 0)) {
		check("race-reset-holds", false, "set-up after the race failed, status 0x", virtio_status(&dev));
		virtio_reset(&dev);
		return check_failures;
	}
	cc_write16(&dev, CC_Q_SELECT, 0);
	notify = (volatile u16 *)(dev.notify_base + cc_read16(&dev, CC_Q_NOFF) * dev.notify_mult);
	/* A read of sector 0 on the race's rings, which the driver has not enabled since. */
	blk_hdr.type = VIRTIO_BLK_T_IN;
	blk_hdr.reserved = 0;
	blk_hdr.sector = 0;
	blk_status = 0xff;
	d[0] = (struct virtq_desc){ (u64)&blk_hdr, sizeof(blk_hdr), VIRTQ_DESC_F_NEXT, 1 };
	d[1] = (struct virtq_desc){ (u64)blk_buf, SECTOR, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2 };
	d[2] = (struct virtq_desc){ (u64)&blk_status, 1, VIRTQ_DESC_F_WRITE, 0 };
	used_before = qmem[0].used.idx;
	qmem[0].avail.ring[qmem[0].avail.idx & 7] = 0;
	asm volatile("" ::: "memory");
	qmem[0].avail.idx++;
	virtio_driver_ok(&dev);
	*notify = 0;
	for (u64 end = rdtsc() + (1ULL << 29); rdtsc() < end;)
		asm volatile("pause");
	print("race: queue_enable reads ");
	print_dec(cc_read16(&dev, CC_Q_ENABLE));
	print(", used index ");
	print_dec(used_before);
	print(" -> ");
	print_dec(qmem[0].used.idx);
	print(", status byte 0x");
	print_hex(blk_status);
	print("\n");
	check("race-reset-holds", cc_read16(&dev, CC_Q_ENABLE) == 0 &&
	      qmem[0].used.idx == used_before && blk_status == 0xff,
	      "the device served a queue the driver did not enable, status 0x", blk_status);
	virtio_reset(&dev);

	check_recovered("race-recovered");
	return check_failures;
}
