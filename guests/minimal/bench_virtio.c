/*
 * bench_virtio.c: the virtio cases of scripts/bench, on the same drivers as
 * the tests (virtio.c) and under every VMM alike: no hypercalls.
 *
 *   bench=blk-read:TOTAL:REQSIZE:QD    read TOTAL bytes from the first
 *   bench=blk-write:TOTAL:REQSIZE:QD   virtio-blk disk (write: the first
 *                                      writable one), sequentially from
 *                                      sector 0 and round again at the end,
 *                                      REQSIZE bytes a request, QD requests
 *                                      in flight
 *   bench=net-tx:BYTES:FRAMESIZE       send BYTES in Ethernet frames of
 *                                      FRAMESIZE bytes (header included) as
 *                                      fast as the transmit ring takes them
 *   bench=net-rx:BYTES                 receive until frames of BYTES bytes in
 *                                      all have arrived (the host floods the tap)
 *
 * Unlike the other modes, these time themselves: the transfer runs from the
 * first request offered to the last one completed, and the guest prints
 * "bench-ticks: <TSC ticks>" once it is over.  Boot jitter (tens of ms for
 * QEMU) would otherwise swamp the short cases, such as 64 MiB in 128 KiB
 * requests.  The harness turns ticks into seconds with the host's TSC rate,
 * which KVM gives the guest unless told otherwise.  A failed request, or
 * nothing happening for some seconds, prints "bench: <why>" and exits 1.
 *
 * Guest kernel code may run in an instruction emulator (see README.md), so
 * everything that can be built once is: descriptor chains are fixed per
 * request slot, and a request in the loop is a sector number, a status byte
 * and an avail ring entry.  We poll; no interrupts.
 */
#include "bench_virtio.h"
#include "exit.h"
#include "pic.h"
#include "virtio.h"

/*
 * Queue depth 32 needs 96 descriptors (header, data, status), so these rings
 * have 128 entries (the spec allows up to 32768; we take less if the device
 * offers less).  Request and frame buffers live at 16 MiB, past the kernel:
 * QD * REQSIZE is at most 8 MiB, so the guest needs 24 MiB of RAM.
 */
#define BENCH_RING	128
#define BENCH_DATA	0x1000000UL
#define BENCH_DATA_MAX	0x800000UL
#define BLK_QD_MAX	32
#define SECTOR		512

#define VIRTIO_BLK_F_RO		(1ULL << 5)
#define VIRTIO_BLK_F_FLUSH	(1ULL << 9)
#define VIRTIO_BLK_T_IN		0
#define VIRTIO_BLK_T_OUT	1

#define VIRTIO_NET_F_MAC	(1ULL << 5)
#define NET_HDR_LEN		12	/* struct virtio_net_hdr with VERSION_1 */
#define NET_BUF			2048

#define VIRTQ_USED_F_NO_NOTIFY	1
#define VIRTIO_F_EVENT_IDX	(1ULL << 29)

static struct virtq_mem_bench VIRTQ_LAYOUT(BENCH_RING) ring[2];
static struct virtq vq, txq;
static struct virtio_dev dev;

static struct {
	u32 type, reserved;
	u64 sector;
} blk_hdr[BLK_QD_MAX];
static volatile u8 blk_status[BLK_QD_MAX];

static void report_ticks(u64 start)
{
	u64 ticks = rdtsc() - start;

	print("bench-ticks: ");
	print_dec((long)ticks);
	print("\n");
}

static _Noreturn void fail(const char *why, long value)
{
	print("bench: ");
	print(why);
	print_dec(value);
	print("\n");
	virtio_reset(&dev);
	guest_exit(1);
}

/*
 * Tell the device about the avail entries offered since index 'before',
 * unless it said it does not need to hear of them: with EVENT_IDX (which a
 * Linux guest takes too), only if they pass the avail_event it left after
 * the used ring; otherwise unless used.flags has NO_NOTIFY (it is still
 * working through the ring).  The locked add orders our avail.idx store
 * before the load of what the device wrote.  We never ask for interrupts:
 * used_event stays 0 and the devices have no vector.
 */
static void kick(struct virtq *q, u16 before)
{
	asm volatile("lock; addl $0, (%%rsp)" : : : "memory");
	if (dev.features & VIRTIO_F_EVENT_IDX) {
		u16 event = *(volatile u16 *)((u8 *)q->used + 4 + 8 * q->size);

		if ((u16)(q->next_avail - event - 1) < (u16)(q->next_avail - before))
			virtq_notify(q);
	} else if (!(q->used->flags & VIRTQ_USED_F_NO_NOTIFY)) {
		virtq_notify(q);
	}
}

/*
 * Wait for the next used entry.  A silence of about 2^34 TSC ticks (some
 * seconds) or DEVICE_NEEDS_RESET ends the run; both are checked only every
 * 64 Ki polls, since reading the status is an exit.
 */
static void await_used(struct virtq *q, u32 *id, u32 *len)
{
	u64 deadline = rdtsc() + (1ULL << 34);

	for (unsigned i = 1; !virtq_poll(q, id, len); i++) {
		if (!(i & 0xffff)) {
			if (virtio_status(&dev) & VIRTIO_NEEDS_RESET)
				fail("DEVICE_NEEDS_RESET on queue ", q->index);
			if (rdtsc() > deadline)
				fail("no completion for seconds on queue ", q->index);
		}
		asm volatile("pause");
	}
}

/* "A:B:C" into v[0..n); false unless there are exactly n numbers. */
static bool parse_numbers(const char *s, size_t len, long *v, int n)
{
	for (int i = 0; i < n; i++) {
		size_t j = 0;

		while (j < len && s[j] != ':')
			j++;
		if ((j < len) != (i + 1 < n) || (v[i] = parse_decimal(s, j)) < 0)
			return false;
		s += j + 1;
		len -= j < len ? j + 1 : j;
	}
	return true;
}

static void bench_blk(bool write, long total, long reqsize, long qd)
{
	u64 capacity, per = (u64)reqsize / SECTOR, next = 0, start;
	long left, inflight = 0;
	u32 id, len;

	if (reqsize <= 0 || reqsize % SECTOR || qd < 1 || qd > BLK_QD_MAX ||
	    (u64)reqsize * qd > BENCH_DATA_MAX)
		fail("REQSIZE must be a multiple of 512 and QD 1-32, QD*REQSIZE <= 8 MiB; QD ", qd);
	pic_setup(0xff);
	for (int nth = 0;; nth++) {
		if (!virtio_probe(&dev, VIRTIO_ID_BLK, nth))
			fail(write ? "no writable virtio-blk device; devices seen: " :
			     "no virtio-blk device; devices seen: ", nth);
		if (!write || !(dev.offered & VIRTIO_BLK_F_RO))
			break;
	}
	/*
	 * FLUSH, as Linux's driver takes it: a driver without it must be given
	 * a write-through disk (QEMU then syncs every write), one with it gets
	 * the host's write-back cache and flushes when it wants durability.
	 * The benchmark never flushes.
	 */
	if (!virtio_negotiate(&dev, VIRTIO_BLK_F_FLUSH | VIRTIO_F_EVENT_IDX, 0) ||
	    !virtq_setup_mem(&dev, &vq, 0, &ring[0], BENCH_RING, VIRTIO_NO_VECTOR))
		fail("virtio-blk set-up failed, status ", virtio_status(&dev));
	if (vq.size < 3 * qd)
		fail("the device's queue is too small for this QD: entries ", vq.size);
	virtio_cfg_read(&dev, 0, &capacity, 8);
	if (capacity < per)
		fail("the disk is smaller than one request: sectors ", capacity);
	virtio_driver_ok(&dev);

	/* Slot k owns descriptors 3k (header), 3k+1 (data), 3k+2 (status). */
	for (long k = 0; k < qd; k++) {
		struct vbuf b[3] = {
			{ (u64)&blk_hdr[k], sizeof(blk_hdr[k]), false },
			{ BENCH_DATA + (u64)k * reqsize, (u32)reqsize, !write },
			{ (u64)&blk_status[k], 1, true },
		};
		struct virtq_desc *d = &vq.desc[3 * k];

		blk_hdr[k].type = write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN;
		for (int i = 0; i < 3; i++) {
			d[i].addr = b[i].addr;
			d[i].len = b[i].len;
			d[i].flags = (b[i].write ? VIRTQ_DESC_F_WRITE : 0) |
				     (i < 2 ? VIRTQ_DESC_F_NEXT : 0);
			d[i].next = (u16)(3 * k + i + 1);
		}
	}

	start = rdtsc();
	left = (total + reqsize - 1) / reqsize;
	for (long k = 0; k < qd && left; k++, left--, inflight++) {
		blk_hdr[k].sector = next;
		blk_status[k] = 0xff;
		next = next + 2 * per > capacity ? 0 : next + per;
		virtq_offer(&vq, (u16)(3 * k));
	}
	if (inflight)
		kick(&vq, 0);
	while (inflight) {
		u16 before = vq.next_avail;

		await_used(&vq, &id, &len);
		do {
			u32 k = id / 3;

			if (id % 3 || k >= qd)
				fail("used entry names a descriptor we never offered: ", id);
			if (blk_status[k] != 0)
				fail("request failed with status ", blk_status[k]);
			inflight--;
			if (left) {
				blk_hdr[k].sector = next;
				blk_status[k] = 0xff;
				next = next + 2 * per > capacity ? 0 : next + per;
				virtq_offer(&vq, (u16)id);
				left--, inflight++;
			}
		} while (virtq_poll(&vq, &id, &len));
		if (vq.next_avail != before)
			kick(&vq, before);
	}
	report_ticks(start);
	virtio_reset(&dev);
}

/*
 * Both queues get our rings; the receive queue is filled with 2 KiB
 * buffers (ample without MRG_RXBUF for a 1514-byte frame and its header),
 * so frames the host sends meanwhile land somewhere.
 */
static void net_start(void)
{
	pic_setup(0xff);
	if (!virtio_probe(&dev, VIRTIO_ID_NET, 0))
		fail("no virtio-net device; devices seen: ", 0);
	if (!virtio_negotiate(&dev, VIRTIO_NET_F_MAC | VIRTIO_F_EVENT_IDX, 0) ||
	    !virtq_setup_mem(&dev, &vq, 0, &ring[0], BENCH_RING, VIRTIO_NO_VECTOR) ||
	    !virtq_setup_mem(&dev, &txq, 1, &ring[1], BENCH_RING, VIRTIO_NO_VECTOR))
		fail("virtio-net set-up failed, status ", virtio_status(&dev));
	for (u16 i = 0; i < vq.size; i++) {
		vq.desc[i].addr = BENCH_DATA + (u64)i * NET_BUF;
		vq.desc[i].len = NET_BUF;
		vq.desc[i].flags = VIRTQ_DESC_F_WRITE;
		virtq_offer(&vq, i);
	}
	virtio_driver_ok(&dev);
	virtq_notify(&vq);
}

/*
 * Every transmit descriptor points at the same frame (the device only
 * reads it): broadcast, our MAC (or zeros), EtherType 0x88b5 (IEEE's
 * "local experimental"), and whatever the payload bytes hold.
 */
static void bench_net_tx(long bytes, long framesize)
{
	u8 *frame = (u8 *)(BENCH_DATA + BENCH_DATA_MAX);
	long frames, sent = 0, done = 0;
	u64 start;
	u32 id, len;

	if (framesize < 60 || framesize > NET_BUF - NET_HDR_LEN)
		fail("FRAMESIZE must be 60-2036: ", framesize);
	net_start();
	memset(frame, 0, NET_HDR_LEN + 14);
	memset(frame + NET_HDR_LEN, 0xff, 6);
	if (dev.features & VIRTIO_NET_F_MAC)
		virtio_cfg_read(&dev, 0, frame + NET_HDR_LEN + 6, 6);
	frame[NET_HDR_LEN + 12] = 0x88;
	frame[NET_HDR_LEN + 13] = 0xb5;
	for (u16 i = 0; i < txq.size; i++) {
		txq.desc[i].addr = (u64)frame;
		txq.desc[i].len = (u32)(NET_HDR_LEN + framesize);
		txq.desc[i].flags = 0;
	}

	start = rdtsc();
	frames = (bytes + framesize - 1) / framesize;
	for (u16 i = 0; i < txq.size && sent < frames; i++, sent++)
		virtq_offer(&txq, i);
	if (sent)
		kick(&txq, 0);
	while (done < frames) {
		u16 before = txq.next_avail;

		await_used(&txq, &id, &len);
		do {
			if (id >= txq.size)
				fail("used entry names a descriptor we never offered: ", id);
			done++;
			if (sent < frames) {
				virtq_offer(&txq, (u16)id);
				sent++;
			}
		} while (virtq_poll(&txq, &id, &len));
		if (txq.next_avail != before)
			kick(&txq, before);
	}
	report_ticks(start);
	virtio_reset(&dev);
}

/* Count frame bytes (the virtio-net header not included) as they come;
 * each buffer goes straight back. */
static void bench_net_rx(long bytes)
{
	long got = 0;
	u64 start;
	u32 id, len;

	net_start();
	start = rdtsc();
	while (got < bytes) {
		u16 before = vq.next_avail;

		await_used(&vq, &id, &len);
		do {
			if (id >= vq.size || len < NET_HDR_LEN || len > NET_BUF)
				fail("bad used entry for descriptor ", id);
			got += len - NET_HDR_LEN;
			virtq_offer(&vq, (u16)id);
		} while (virtq_poll(&vq, &id, &len));
		kick(&vq, before);
	}
	report_ticks(start);
	virtio_reset(&dev);
}

bool run_bench_virtio_word(const char *w, size_t n)
{
	static const struct {
		const char *prefix;
		int numbers;
	} modes[] = {
		{ "bench=blk-read:", 3 },
		{ "bench=blk-write:", 3 },
		{ "bench=net-tx:", 2 },
		{ "bench=net-rx:", 1 },
	};
	long v[3];
	size_t i, p;

	for (i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		p = strlen(modes[i].prefix);
		if (n > p && memcmp(w, modes[i].prefix, p) == 0)
			break;
	}
	if (i == sizeof(modes) / sizeof(modes[0]) ||
	    !parse_numbers(w + p, n - p, v, modes[i].numbers))
		return false;
	switch (i) {
	case 0:
	case 1:
		bench_blk(i == 1, v[0], v[1], v[2]);
		break;
	case 2:
		bench_net_tx(v[0], v[1]);
		break;
	default:
		bench_net_rx(v[0]);
	}
	return true;
}
