/*
 * virtio_net.c: test=net (and test=net-rx-tiny, at the end).  Ask who has
 * the peer's address (ARP), then ping it (ICMP echo), over a virtio-net
 * device; the host side (the VMM's tap device and the host kernel behind
 * it, or QEMU's user network) answers.
 *
 * Receive queue 0 holds a few 2 KiB buffers; every frame that arrives is
 * looked at once and its buffer goes straight back to the device.  Transmit
 * queue 1 sends one frame at a time.  Network byte order is big-endian, so
 * multi-byte fields are put together a byte at a time.
 */
#include "cmdline.h"
#include "pic.h"
#include "virtio.h"
#include "virtio_net.h"

#define VIRTIO_NET_F_MAC	(1ULL << 5)
#define VIRTIO_NET_F_MRG_RXBUF	(1ULL << 15)

/*
 * struct virtio_net_hdr: with VERSION_1 it is always 12 bytes, num_buffers
 * included (before 1.0 it existed only with MRG_RXBUF).  We send zeros: no
 * checksum offload, no segmentation.
 */
#define NET_HDR_LEN		12
#define NET_HDR_NUM_BUFFERS	10

#define RX_BUFS		8
#define BUF_SIZE	2048

static struct virtq_mem net_qmem[2];
static struct virtq rxq, txq;
static struct virtio_dev dev;
static u8 rx_buf[RX_BUFS][BUF_SIZE] __attribute__((aligned(4096)));
static u8 tx_buf[BUF_SIZE];
static int failures;
static bool bad_num_buffers;

static u8 my_mac[6], peer_mac[6], my_ip[4], peer_ip[4];
static const u8 broadcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

#define ETH_ARP		0x0806
#define ETH_IPV4	0x0800
#define ICMP_ID		0x5356		/* "SV" */
#define ICMP_SEQ	1
static const char ping_data[32] = "swiftvmm minimal guest echo 0123";

static void put16(u8 *p, u16 v)
{
	p[0] = v >> 8;
	p[1] = (u8)v;
}

static u16 get16(const u8 *p)
{
	return (u16)(p[0] << 8 | p[1]);
}

/* The Internet checksum: one's complement of the one's complement sum. */
static u16 inet_csum(const u8 *p, unsigned n)
{
	u32 sum = 0;

	for (; n > 1; n -= 2, p += 2)
		sum += get16(p);
	if (n)
		sum += p[0] << 8;
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (u16)~sum;
}

/* "A.B.C.D" (ending at a space or the end) into a[4]; false if malformed. */
static bool parse_ip(const char *s, u8 a[4])
{
	for (int i = 0; i < 4; i++) {
		unsigned v = 0, digits = 0;

		for (; *s >= '0' && *s <= '9' && digits < 4; s++, digits++)
			v = v * 10 + (*s - '0');
		if (!digits || v > 255)
			return false;
		a[i] = (u8)v;
		if (i < 3 && *s++ != '.')
			return false;
	}
	return *s == 0 || *s == ' ';
}

static void print_mac(const u8 *m)
{
	for (int i = 0; i < 6; i++) {
		if (i)
			print(":");
		if (m[i] < 16)
			print("0");
		print_hex(m[i]);
	}
}

/* One frame out: header + 'len' bytes already in tx_buf after the header. */
static bool send_frame(unsigned len)
{
	struct vbuf b = { (u64)tx_buf, NET_HDR_LEN + (len < 60 ? 60 : len), false };
	u32 id, used;
	int r;

	memset(tx_buf, 0, NET_HDR_LEN);
	if (len < 60)
		memset(tx_buf + NET_HDR_LEN + len, 0, 60 - len);	/* Ethernet minimum */
	virtq_submit(&txq, 0, &b, 1);
	r = virtq_wait(&dev, &txq, &id, &used);
	if (r != VQ_DONE) {
		print(r == VQ_NEEDS_RESET ? "net: transmit: DEVICE_NEEDS_RESET\n" :
		      "net: transmit: no answer\n");
		return false;
	}
	return true;
}

static u8 *eth_header(const u8 *dst, u16 type)
{
	u8 *f = tx_buf + NET_HDR_LEN;

	memcpy(f, dst, 6);
	memcpy(f + 6, my_mac, 6);
	put16(f + 12, type);
	return f + 14;
}

static bool send_arp_request(void)
{
	u8 *a = eth_header(broadcast, ETH_ARP);

	put16(a, 1);			/* hardware: Ethernet */
	put16(a + 2, ETH_IPV4);		/* protocol: IPv4 */
	a[4] = 6;
	a[5] = 4;
	put16(a + 6, 1);		/* request */
	memcpy(a + 8, my_mac, 6);
	memcpy(a + 14, my_ip, 4);
	memset(a + 18, 0, 6);
	memcpy(a + 24, peer_ip, 4);
	return send_frame(14 + 28);
}

static bool send_ping(void)
{
	u8 *ip = eth_header(peer_mac, ETH_IPV4), *icmp = ip + 20;

	ip[0] = 0x45;			/* IPv4, 5-word header */
	ip[1] = 0;
	put16(ip + 2, 20 + 8 + sizeof(ping_data));
	put16(ip + 4, 1);		/* identification */
	put16(ip + 6, 0x4000);		/* don't fragment */
	ip[8] = 64;			/* TTL */
	ip[9] = 1;			/* ICMP */
	put16(ip + 10, 0);
	memcpy(ip + 12, my_ip, 4);
	memcpy(ip + 16, peer_ip, 4);
	put16(ip + 10, inet_csum(ip, 20));
	icmp[0] = 8;			/* echo request */
	icmp[1] = 0;
	put16(icmp + 2, 0);
	put16(icmp + 4, ICMP_ID);
	put16(icmp + 6, ICMP_SEQ);
	memcpy(icmp + 8, ping_data, sizeof(ping_data));
	put16(icmp + 2, inet_csum(icmp, 8 + sizeof(ping_data)));
	return send_frame(14 + 20 + 8 + sizeof(ping_data));
}

enum { GOT_NOTHING, GOT_ARP_REPLY, GOT_ECHO_REPLY };

/* What a received frame (after the virtio-net header) is to us. */
static int classify(const u8 *f, u32 len)
{
	const u8 *p = f + 14;

	if (len >= 14 + 28 && get16(f + 12) == ETH_ARP && get16(p + 6) == 2 &&
	    memcmp(p + 14, peer_ip, 4) == 0 && memcmp(p + 24, my_ip, 4) == 0) {
		memcpy(peer_mac, p + 8, 6);
		return GOT_ARP_REPLY;
	}
	if (len >= 14 + 20 + 8 + sizeof(ping_data) && get16(f + 12) == ETH_IPV4 &&
	    (p[0] >> 4) == 4 && p[9] == 1 && memcmp(p + 12, peer_ip, 4) == 0 &&
	    memcmp(p + 16, my_ip, 4) == 0) {
		const u8 *icmp = p + (p[0] & 15) * 4;

		if (icmp + 8 + sizeof(ping_data) <= f + len && icmp[0] == 0 &&
		    get16(icmp + 4) == ICMP_ID && get16(icmp + 6) == ICMP_SEQ &&
		    memcmp(icmp + 8, ping_data, sizeof(ping_data)) == 0)
			return GOT_ECHO_REPLY;
	}
	return GOT_NOTHING;
}

/*
 * Wait for a frame of kind 'want', resending with 'resend' about every
 * 2^31 TSC ticks (half a second or so), at most 5 sends in all.
 */
static bool await(int want, bool (*resend)(void))
{
	u64 next = rdtsc() + (1ULL << 31);
	int sends = 1;
	u32 id, len;

	for (unsigned i = 1;; i++) {
		while (virtq_poll(&rxq, &id, &len)) {
			const u8 *b;
			int got;

			if (id >= RX_BUFS || len < NET_HDR_LEN || len > BUF_SIZE) {
				print("net: bad used element: id ");
				print_dec(id);
				print(", length ");
				print_dec(len);
				print("\n");
				return false;
			}
			b = rx_buf[id];
			if ((dev.features & VIRTIO_NET_F_MRG_RXBUF) && !bad_num_buffers &&
			    (b[NET_HDR_NUM_BUFFERS] | b[NET_HDR_NUM_BUFFERS + 1] << 8) != 1) {
				print("FAIL net-num-buffers: not 1 for a frame that fits one buffer: ");
				print_dec(b[NET_HDR_NUM_BUFFERS] | b[NET_HDR_NUM_BUFFERS + 1] << 8);
				print("\n");
				bad_num_buffers = true;
				failures++;
			}
			got = classify(b + NET_HDR_LEN, len - NET_HDR_LEN);
			virtq_push(&rxq, id);		/* the buffer goes back */
			if (got == want)
				return true;
		}
		if (!(i & 1023)) {
			if (virtio_status(&dev) & VIRTIO_NEEDS_RESET) {
				print("net: DEVICE_NEEDS_RESET\n");
				return false;
			}
			if (rdtsc() > next) {
				if (sends == 5)
					return false;
				if (!resend())
					return false;
				sends++;
				next = rdtsc() + (1ULL << 31);
			}
		}
		asm volatile("pause");
	}
}

int test_net(void)
{
	const char *ip = cmdline_value("ip="), *peer = cmdline_value("peer=");
	u16 rx_count;

	failures = 0;
	bad_num_buffers = false;
	if (!parse_ip(ip ? ip : "10.0.2.15", my_ip) || !parse_ip(peer ? peer : "10.0.2.2", peer_ip)) {
		print("FAIL net: ip= or peer= is not A.B.C.D\n");
		return 1;
	}
	pic_setup(0xff);
	if (!virtio_probe(&dev, VIRTIO_ID_NET, 0)) {
		print("FAIL net: no virtio-net device\n");
		return 1;
	}
	if (!virtio_negotiate(&dev, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MAC)) {
		print("FAIL net-mac: feature negotiation failed (VIRTIO_NET_F_MAC offered: ");
		print(dev.offered & VIRTIO_NET_F_MAC ? "yes)\n" : "no)\n");
		virtio_reset(&dev);
		return 1;
	}
	virtio_cfg_read(&dev, 0, my_mac, 6);	/* virtio_net_config.mac */
	print("PASS net-mac\nnet: mac ");
	print_mac(my_mac);
	print("\n");

	if (!virtq_setup(&dev, &rxq, 0, &net_qmem[0], VIRTIO_NO_VECTOR) ||
	    !virtq_setup(&dev, &txq, 1, &net_qmem[1], VIRTIO_NO_VECTOR)) {
		print("FAIL net-arp: queue set-up failed\n");
		virtio_reset(&dev);
		return 1;
	}
	/* Fill the receive queue before DRIVER_OK, so no frame finds it empty;
	 * but tell the device only afterwards, as the spec wants. */
	rx_count = rxq.size < RX_BUFS ? rxq.size : RX_BUFS;
	for (u16 i = 0; i < rx_count; i++) {
		struct vbuf b = { (u64)rx_buf[i], BUF_SIZE, true };

		virtq_add(&rxq, i, &b, 1);
	}
	virtio_driver_ok(&dev);
	virtq_notify(&rxq);

	if (send_arp_request() && await(GOT_ARP_REPLY, send_arp_request)) {
		print("PASS net-arp\nnet: peer mac ");
		print_mac(peer_mac);
		print("\n");
		if (send_ping() && await(GOT_ECHO_REPLY, send_ping)) {
			print("PASS net-ping\n");
		} else {
			print("FAIL net-ping: no echo reply\n");
			failures++;
		}
	} else {
		print("FAIL net-arp: no ARP reply\n");
		print("FAIL net-ping: no ARP reply\n");
		failures += 2;
	}
	virtio_reset(&dev);
	return failures;
}

/*
 * test=net-rx-tiny: receive buffers too small for the 1514-byte frames a
 * sender floods the tap with (Ethernet type 0x88b5), under MRG_RXBUF.
 *
 * First every buffer the ring can hold is posted, 32 bytes each, and all of
 * them together are still too small: the device must drop such a frame (and
 * count it), not spin over the same buffers; small frames (the host's own
 * IPv6 chatter) may still arrive.  A device spinning under its lock would
 * never let the reset that follows through.
 *
 * Then buffers that hold only half a frame are posted: the device must wait
 * for more rather than drop or truncate it; once the rest are posted, one
 * frame arrives spread over twelve 128-byte buffers, num_buffers says so.
 */
#define TINY_BUF	32
#define SMALL_BUF	128
#define SENDER_TYPE	0x88b5
#define SENDER_FRAME	(NET_HDR_LEN + 1514)

static u8 small_buf[VIRTQ_MAX][SMALL_BUF] __attribute__((aligned(64)));

/* A frame put together from its buffers: the first carries the header. */
struct rx_frame {
	u16 expected, got;	/* num_buffers; buffers seen so far */
	u16 type;		/* Ethernet type, from the first buffer */
	u32 length;		/* bytes over all its buffers */
	bool bad;
};

/*
 * Take what the device used, a buffer at a time; each goes straight back.
 * True when a whole frame is in *f (which is then started over by the caller).
 */
static bool rx_collect(struct rx_frame *f, unsigned buf_size)
{
	u32 id, len;

	while (virtq_poll(&rxq, &id, &len)) {
		if (id >= rxq.size || len > buf_size || (f->got == 0 && len < NET_HDR_LEN + 14)) {
			f->bad = true;
		} else if (f->got == 0) {
			const u8 *b = small_buf[id];

			f->expected = b[NET_HDR_NUM_BUFFERS] | b[NET_HDR_NUM_BUFFERS + 1] << 8;
			f->type = get16(b + NET_HDR_LEN + 12);
		}
		f->got++;
		f->length += len;
		virtq_push(&rxq, (u16)(id < rxq.size ? id : 0));
		if (f->bad || f->got >= f->expected)
			return true;
	}
	return false;
}

static bool rx_start(void)
{
	if (!virtio_negotiate(&dev, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MRG_RXBUF) ||
	    !virtq_setup(&dev, &rxq, 0, &net_qmem[0], VIRTIO_NO_VECTOR) ||
	    !virtq_setup(&dev, &txq, 1, &net_qmem[1], VIRTIO_NO_VECTOR)) {
		print("net: set-up failed, status 0x");
		print_hex(virtio_status(&dev));
		print("\n");
		return false;
	}
	return true;
}

static void rx_post(u16 first, u16 count, unsigned size)
{
	for (u16 i = first; i < first + count; i++) {
		struct vbuf b = { (u64)small_buf[i], size, true };

		virtq_add(&rxq, i, &b, 1);
	}
}

/* Watch the ring for about 2^31 TSC ticks: no frame of the sender's may arrive. */
static bool rx_watch(const char *name, unsigned buf_size)
{
	struct rx_frame f = { 0 };
	unsigned frames = 0;

	for (u64 end = rdtsc() + (1ULL << 31); rdtsc() < end;) {
		if (rx_collect(&f, buf_size)) {
			if (f.bad || f.type == SENDER_TYPE || f.length > f.expected * buf_size) {
				print("FAIL ");
				print(name);
				print(": a frame that cannot fit arrived: type 0x");
				print_hex(f.type);
				print(", ");
				print_dec(f.length);
				print(" bytes in ");
				print_dec(f.got);
				print(" buffers\n");
				failures++;
				return false;
			}
			frames++;
			f = (struct rx_frame){ 0 };
		}
		asm volatile("pause");
	}
	print("net: ");
	print(name);
	print(": ");
	print_dec(frames);
	print(" small frames arrived meanwhile\n");
	return true;
}

int test_net_rx_tiny(void)
{
	struct rx_frame f = { 0 };
	u64 deadline;

	failures = 0;
	pic_setup(0xff);
	if (!virtio_probe(&dev, VIRTIO_ID_NET, 0) || !rx_start()) {
		print("FAIL net-rx-tiny-drop: no virtio-net device with MRG_RXBUF\n");
		virtio_reset(&dev);
		return 1;
	}

	/* The whole ring, 16 x 32 bytes: no sender frame can ever fit. */
	rx_post(0, rxq.size, TINY_BUF);
	virtio_driver_ok(&dev);
	virtq_notify(&rxq);
	if (rx_watch("net-rx-tiny-drop", TINY_BUF))
		print("PASS net-rx-tiny-drop\n");
	virtio_reset(&dev);	/* would hang here behind a device spinning under its lock */
	print("net: reset after the drops\n");

	/* Half the ring, 8 x 128 bytes: a frame waits for the other half. */
	if (!rx_start()) {
		print("FAIL net-rx-tiny-merge: set-up after the reset failed\n");
		virtio_reset(&dev);
		return failures + 1;
	}
	rx_post(0, rxq.size / 2, SMALL_BUF);
	virtio_driver_ok(&dev);
	virtq_notify(&rxq);
	if (!rx_watch("net-rx-tiny-wait", SMALL_BUF)) {
		virtio_reset(&dev);
		return failures;
	}
	print("PASS net-rx-tiny-wait\n");
	rx_post(rxq.size / 2, rxq.size / 2, SMALL_BUF);
	virtq_notify(&rxq);
	for (deadline = rdtsc() + (1ULL << 34); rdtsc() < deadline;) {
		if (rx_collect(&f, SMALL_BUF)) {
			if (!f.bad && f.type == SENDER_TYPE)
				break;
			f = (struct rx_frame){ 0 };
		}
		asm volatile("pause");
	}
	print("net: the sender's frame: ");
	print_dec(f.length);
	print(" bytes in ");
	print_dec(f.got);
	print(" buffers, num_buffers ");
	print_dec(f.expected);
	print("\n");
	if (f.type == SENDER_TYPE && !f.bad && f.length == SENDER_FRAME &&
	    f.got == (SENDER_FRAME + SMALL_BUF - 1) / SMALL_BUF && f.expected == f.got) {
		print("PASS net-rx-tiny-merge\n");
	} else {
		print("FAIL net-rx-tiny-merge: wanted 1526 bytes in 12 buffers\n");
		failures++;
	}
	virtio_reset(&dev);
	return failures;
}
