/*
 * virtio_fs.c: test=virtio-fs, a FUSE client for a virtio-fs device.
 *
 * virtio-fs (virtio 1.2, 5.11) carries FUSE messages: the guest plays the
 * kernel's part of FUSE, and the device (for swiftvmm, a virtiofsd behind
 * vhost-user) is the file server.  Each request is one descriptor chain: a
 * device-readable part, struct fuse_in_header and the opcode's arguments,
 * then a device-writable part the answer goes into, struct fuse_out_header
 * and the opcode's reply.  The layouts are those of the kernel's
 * include/uapi/linux/fuse.h; we speak protocol 7.31, the oldest QEMU's
 * virtiofsd accepts.
 *
 * Queue 0 is the high-priority queue (FUSE_INTERRUPT, FORGET): set up, as
 * a driver must, and never used.  Queue 1 is the one request queue.  Its
 * completions interrupt through MSI-X table entry 0 (fs-msix proves that the
 * back-end's interrupt requests reach us), and we poll its used ring as
 * well, each wait bounded by virtq_wait's deadline.
 */
#include "check.h"
#include "cmdline.h"
#include "hypercall.h"
#include "pic.h"
#include "virtio.h"
#include "virtio_fs.h"

#define VIRTIO_ID_FS	26

/* struct virtio_fs_config */
#define FS_CFG_TAG	0	/* u8 tag[36], NUL-padded (not terminated if 36 long) */
#define FS_TAG_LEN	36
#define FS_CFG_NUM_REQ	36	/* le32 num_request_queues */

#define FUSE_LOOKUP	1
#define FUSE_GETATTR	3
#define FUSE_OPEN	14
#define FUSE_READ	15
#define FUSE_WRITE	16
#define FUSE_RELEASE	18
#define FUSE_INIT	26
#define FUSE_CREATE	35

#define FUSE_ROOT_ID	1
#define FUSE_MINOR	31

/* Linux's values, which virtiofsd passes on to open(2) and returns. */
#define O_RDONLY	0
#define O_WRONLY	01
#define O_CREAT		0100
#define O_EXCL		0200
#define S_IFMT		0170000
#define S_IFDIR		0040000
#define S_IFREG		0100000
#define EROFS		30

typedef int32_t s32;

struct fuse_in_header {
	u32 len, opcode;
	u64 unique, nodeid;
	u32 uid, gid, pid;
	u16 total_extlen, padding;
};

struct fuse_out_header {
	u32 len;
	s32 error;		/* 0 or -errno */
	u64 unique;
};

struct fuse_init_in {
	u32 major, minor, max_readahead, flags, flags2, unused[11];
};

struct fuse_init_out {
	u32 major, minor, max_readahead, flags;
	u16 max_background, congestion_threshold;
	u32 max_write, time_gran;
	u16 max_pages, map_alignment;
	u32 flags2, unused[7];
};

struct fuse_attr {
	u64 ino, size, blocks, atime, mtime, ctime;
	u32 atimensec, mtimensec, ctimensec;
	u32 mode, nlink, uid, gid, rdev, blksize, flags;
};

struct fuse_entry_out {
	u64 nodeid, generation, entry_valid, attr_valid;
	u32 entry_valid_nsec, attr_valid_nsec;
	struct fuse_attr attr;
};

struct fuse_getattr_in {
	u32 getattr_flags, dummy;
	u64 fh;
};

struct fuse_attr_out {
	u64 attr_valid;
	u32 attr_valid_nsec, dummy;
	struct fuse_attr attr;
};

struct fuse_open_in {
	u32 flags, open_flags;
};

struct fuse_create_in {
	u32 flags, mode, umask, open_flags;
};

struct fuse_open_out {
	u64 fh;
	u32 open_flags, padding;
};

struct fuse_release_in {
	u64 fh;
	u32 flags, release_flags;
	u64 lock_owner;
};

/* fuse_read_in and fuse_write_in have the same layout. */
struct fuse_io_in {
	u64 fh, offset;
	u32 size, io_flags;
	u64 lock_owner;
	u32 flags, padding;
};

struct fuse_write_out {
	u32 size, padding;
};

/* The byte counts fuse.h fixes (the virtiofsd on the other side was built with them). */
_Static_assert(sizeof(struct fuse_in_header) == 40, "fuse_in_header");
_Static_assert(sizeof(struct fuse_out_header) == 16, "fuse_out_header");
_Static_assert(sizeof(struct fuse_init_in) == 64, "fuse_init_in");
_Static_assert(sizeof(struct fuse_init_out) == 64, "fuse_init_out");
_Static_assert(sizeof(struct fuse_attr) == 88, "fuse_attr");
_Static_assert(sizeof(struct fuse_entry_out) == 128, "fuse_entry_out");
_Static_assert(sizeof(struct fuse_attr_out) == 104, "fuse_attr_out");
_Static_assert(sizeof(struct fuse_create_in) == 16, "fuse_create_in");
_Static_assert(sizeof(struct fuse_release_in) == 24, "fuse_release_in");
_Static_assert(sizeof(struct fuse_io_in) == 40, "fuse_read_in / fuse_write_in");

/* What the guest writes into fs-create's file; the host test compares it. */
static const char written[] = "written by the minimal guest over virtio-fs\n";

#define READ_MAX	200
#define NAME_MAX	64

static struct virtq_mem fs_qmem[2];
static struct virtq hiprioq, reqq;
static struct virtio_dev dev;
static u8 req_buf[512] __attribute__((aligned(64)));
static u8 reply_buf[4096] __attribute__((aligned(4096)));
static u64 next_unique = 1;
/* fs-hold's thousands of requests are not each worth a line. */
static bool quiet;

/* Outcomes of fuse_request besides a FUSE error (0 or -errno). */
#define FS_TIMEOUT	1
#define FS_NEEDS_RESET	2
#define FS_BAD_REPLY	3

static const char *opcode_name(u32 op)
{
	switch (op) {
	case FUSE_LOOKUP: return "FUSE_LOOKUP";
	case FUSE_GETATTR: return "FUSE_GETATTR";
	case FUSE_OPEN: return "FUSE_OPEN";
	case FUSE_READ: return "FUSE_READ";
	case FUSE_WRITE: return "FUSE_WRITE";
	case FUSE_RELEASE: return "FUSE_RELEASE";
	case FUSE_INIT: return "FUSE_INIT";
	case FUSE_CREATE: return "FUSE_CREATE";
	default: return "FUSE_?";
	}
}

/*
 * One FUSE request on node 'nodeid': the header, then arg[0..arg_len) and
 * tail[0..tail_len) (a name, or the data of a write), device-readable in one
 * descriptor; the whole of reply_buf device-writable in another.  Returns
 * the reply's error (0 or -errno), with *reply and *reply_len the part after
 * the out header; or FS_TIMEOUT, FS_NEEDS_RESET or FS_BAD_REPLY, having
 * printed why.
 */
static int fuse_request(u32 opcode, u64 nodeid, const void *arg, u32 arg_len,
			const void *tail, u32 tail_len, const u8 **reply, u32 *reply_len)
{
	struct fuse_in_header *in = (struct fuse_in_header *)req_buf;
	volatile struct fuse_out_header *out = (volatile struct fuse_out_header *)reply_buf;
	u32 len = sizeof(*in) + arg_len + tail_len, id, used;
	u64 unique = next_unique++;
	struct vbuf b[2];
	int r;

	memset(in, 0, sizeof(*in));
	in->len = len;
	in->opcode = opcode;
	in->unique = unique;
	in->nodeid = nodeid;
	in->pid = 1;		/* uid and gid 0: virtiofsd acts as root for us */
	memcpy(req_buf + sizeof(*in), arg, arg_len);
	memcpy(req_buf + sizeof(*in) + arg_len, tail, tail_len);
	/* A reply that never writes the header cannot pass for one that did. */
	memset((void *)out, 0xff, sizeof(*out));
	b[0] = (struct vbuf){ (u64)req_buf, len, false };
	b[1] = (struct vbuf){ (u64)reply_buf, sizeof(reply_buf), true };
	virtq_submit(&reqq, 0, b, 2);
	r = virtq_wait(&dev, &reqq, &id, &used);

	if (r != VQ_DONE) {
		print("virtio-fs: ");
		print(opcode_name(opcode));
		print(r == VQ_NEEDS_RESET ? ": the device set DEVICE_NEEDS_RESET\n" :
		      ": no reply within the deadline (is anything serving the request queue?)\n");
		return r == VQ_NEEDS_RESET ? FS_NEEDS_RESET : FS_TIMEOUT;
	}
	/* An error reply is the bare header; the error is 0 or a negative errno. */
	if (id != 0 || used < sizeof(*out) || used > sizeof(reply_buf) || out->len != used ||
	    out->unique != unique || out->error > 0 || (out->error && used != sizeof(*out))) {
		print("virtio-fs: ");
		print(opcode_name(opcode));
		print(": bad reply: used length ");
		print_dec(used);
		print(", head ");
		print_dec(id);
		print(", out.len ");
		print_dec(out->len);
		print(", out.error ");
		print_dec(out->error);
		print(", out.unique ");
		print_dec(out->unique);
		print(" (sent ");
		print_dec(unique);
		print(")\n");
		return FS_BAD_REPLY;
	}
	if (!quiet || out->error) {
		print("virtio-fs: ");
		print(opcode_name(opcode));
		print(": error ");
		print_dec(out->error);
		print("\n");
	}
	*reply = reply_buf + sizeof(*out);
	*reply_len = used - sizeof(*out);
	return out->error;
}

/* A check for a request that must succeed with at least 'need' bytes of reply. */
static bool check_reply(const char *name, int r, u32 len, u32 need)
{
	if (r > 0)
		check(name, false, r == FS_BAD_REPLY ? "bad reply (see above), code " :
		      "no reply (see above), code ", r);
	else if (r < 0)
		check(name, false, "FUSE error ", r);
	else
		check(name, len >= need, "reply too short: bytes ", len);
	return r == 0 && len >= need;
}

/* The value of word "prefix..." as a NUL-terminated string in buf; false if absent or empty. */
static bool word_value(const char *prefix, char *buf, size_t size)
{
	const char *v = cmdline_value(prefix);
	size_t n = 0;

	if (!v)
		return false;
	while (v[n] && v[n] != ' ' && n + 1 < size) {
		buf[n] = v[n];
		n++;
	}
	buf[n] = 0;
	return n > 0;
}

/* File contents for the console: newlines as \n, other unprintables as '.'. */
static void print_escaped(const u8 *s, u32 n)
{
	for (u32 i = 0; i < n; i++) {
		if (s[i] == '\n')
			print("\\n");
		else if (s[i] < 0x20 || s[i] >= 0x7f)
			print(".");
		else
			print_n((const char *)&s[i], 1);
	}
}

static void release(const char *name, u64 nodeid, u64 fh, u32 flags)
{
	struct fuse_release_in rel = { .fh = fh, .flags = flags };
	const u8 *reply;
	u32 len = 0;

	check_reply(name, fuse_request(FUSE_RELEASE, nodeid, &rel, sizeof(rel), 0, 0, &reply, &len),
		    len, 0);
}

/* fs-file=NAME: look it up in the root, open it, read it, release it. */
static void read_file(const char *name)
{
	struct fuse_entry_out entry;
	struct fuse_open_in open = { .flags = O_RDONLY };
	struct fuse_io_in rd = { .size = READ_MAX, .flags = O_RDONLY };
	const u8 *reply;
	u32 len = 0, want;
	u64 fh;
	int r;

	r = fuse_request(FUSE_LOOKUP, FUSE_ROOT_ID, name, strlen(name) + 1, 0, 0, &reply, &len);
	if (!check_reply("fs-lookup", r, len, sizeof(entry)))
		return;
	memcpy(&entry, reply, sizeof(entry));
	print("virtio-fs: ");
	print(name);
	print(": nodeid ");
	print_dec(entry.nodeid);
	print(", size ");
	print_dec(entry.attr.size);
	print(", mode 0x");
	print_hex(entry.attr.mode);
	print("\n");
	check("fs-lookup-attr", (entry.attr.mode & S_IFMT) == S_IFREG && entry.nodeid != 0,
	      "not a regular file, mode 0x", entry.attr.mode);

	r = fuse_request(FUSE_OPEN, entry.nodeid, &open, sizeof(open), 0, 0, &reply, &len);
	if (!check_reply("fs-open", r, len, sizeof(struct fuse_open_out)))
		return;
	fh = ((const struct fuse_open_out *)reply)->fh;

	rd.fh = fh;
	want = entry.attr.size < READ_MAX ? entry.attr.size : READ_MAX;
	r = fuse_request(FUSE_READ, entry.nodeid, &rd, sizeof(rd), 0, 0, &reply, &len);
	if (check_reply("fs-read", r, len, 0)) {
		print("virtio-fs: read ");
		print_dec(len);
		print(" bytes: \"");
		print_escaped(reply, len);
		print("\"\n");
		if (len != want)
			check("fs-read-size", false, "bytes read differ from the file's size (or 200): ", len);
		else
			check("fs-read-size", true, "", 0);
	}
	release("fs-release", entry.nodeid, fh, O_RDONLY);
}

/*
 * fs-create=NAME: create it in the root.  With fs-ro the share is read-only
 * on the host, and the create must fail with EROFS; otherwise it must work,
 * and we write 'written' into it and release it, for the host to check.
 */
static void create_file(const char *name, bool read_only)
{
	struct fuse_create_in create = {
		.flags = O_WRONLY | O_CREAT | O_EXCL, .mode = S_IFREG | 0644, .umask = 0,
	};
	struct fuse_io_in wr = { .size = sizeof(written) - 1, .flags = O_WRONLY };
	const u8 *reply;
	u32 len = 0;
	u64 nodeid, fh;
	int r;

	r = fuse_request(FUSE_CREATE, FUSE_ROOT_ID, &create, sizeof(create), name, strlen(name) + 1,
			 &reply, &len);
	print("virtio-fs: create ");
	print(name);
	print(": error ");
	print_dec(r);
	print("\n");
	if (read_only) {
		if (r > 0)
			check_reply("fs-create-erofs", r, len, 0);
		else
			check("fs-create-erofs", r == -EROFS,
			      "FUSE_CREATE on a read-only share did not fail with -EROFS (-30) but: ", r);
		return;
	}
	if (!check_reply("fs-create", r, len, sizeof(struct fuse_entry_out) + sizeof(struct fuse_open_out)))
		return;
	nodeid = ((const struct fuse_entry_out *)reply)->nodeid;
	fh = ((const struct fuse_open_out *)(reply + sizeof(struct fuse_entry_out)))->fh;

	wr.fh = fh;
	r = fuse_request(FUSE_WRITE, nodeid, &wr, sizeof(wr), written, sizeof(written) - 1, &reply, &len);
	if (check_reply("fs-write", r, len, sizeof(struct fuse_write_out)))
		check("fs-write-size", ((const struct fuse_write_out *)reply)->size == sizeof(written) - 1,
		      "bytes written: ", ((const struct fuse_write_out *)reply)->size);
	release("fs-release-new", nodeid, fh, O_WRONLY);
}

/*
 * fs-hold=SECONDS: FUSE_GETATTR on the root, one after another, for that
 * long (by the VMM's clock; by the TSC at an assumed 2 GHz without the
 * hypercall page).  The device stays busy meanwhile, for a host test that
 * does something to the back-end under it.
 */
static void hold(long seconds)
{
	struct fuse_getattr_in ga = { 0 };
	const u8 *reply = 0;
	u32 len = 0, mode = S_IFDIR;
	u64 rounds = 0, end;
	int r = 0;

	if (seconds < 0) {
		check("fs-hold", false, "fs-hold= wants a number of seconds, got ", seconds);
		return;
	}
	print("virtio-fs: holding the device for ");
	print_dec(seconds);
	print(" s\n");
	end = have_hypercalls ? hc_time_ns() + (u64)seconds * 1000000000 :
	      rdtsc() + (u64)seconds * 2000000000;
	quiet = true;
	while ((have_hypercalls ? hc_time_ns() : rdtsc()) < end) {
		r = fuse_request(FUSE_GETATTR, FUSE_ROOT_ID, &ga, sizeof(ga), 0, 0, &reply, &len);
		if (r || len < sizeof(struct fuse_attr_out))
			break;
		mode = ((const struct fuse_attr_out *)reply)->attr.mode;
		if ((mode & S_IFMT) != S_IFDIR)
			break;
		rounds++;
	}
	quiet = false;
	print("virtio-fs: ");
	print_dec(rounds);
	print(" FUSE_GETATTR rounds\n");
	if (check_reply("fs-hold", r, len, rounds ? sizeof(struct fuse_attr_out) : 0) && rounds)
		check("fs-hold-root", (mode & S_IFMT) == S_IFDIR, "the root is not a directory, mode 0x", mode);
}

/* Is the word 'w' on the command line, exactly? */
static bool has_word(const char *w)
{
	const char *v = cmdline_value(w);

	return v && (*v == 0 || *v == ' ');
}

bool virtio_fs_word(const char *w, size_t n)
{
	return word_is(w, n, "fs-ro") ||
	       (n > 8 && memcmp(w, "fs-file=", 8) == 0) ||
	       (n > 10 && memcmp(w, "fs-create=", 10) == 0) ||
	       (n > 8 && memcmp(w, "fs-hold=", 8) == 0);
}

/*
 * The device up to DRIVER_OK: VERSION_1 only, MSI-X table entry 0 for the
 * request queue, both queues enabled (the VMM hands the back-end only the
 * queues the driver enabled).  DRIVER_OK is when swiftvmm hands the rings to
 * virtiofsd; if that fails, the device says DEVICE_NEEDS_RESET.
 */
static bool fs_start(bool *msix)
{
	if (!virtio_negotiate(&dev, 0, 0))
		return false;
	*msix = virtio_msix_enable(&dev);
	if (!virtq_setup(&dev, &hiprioq, 0, &fs_qmem[0], VIRTIO_NO_VECTOR) ||
	    !virtq_setup(&dev, &reqq, 1, &fs_qmem[1], *msix ? 0 : VIRTIO_NO_VECTOR))
		return false;
	virtio_driver_ok(&dev);
	return !(virtio_status(&dev) & (VIRTIO_NEEDS_RESET | VIRTIO_FAILED));
}

int test_virtio_fs(void)
{
	char tag[FS_TAG_LEN + 1], name[NAME_MAX], hold_for[12];
	struct fuse_init_in init = { .major = 7, .minor = FUSE_MINOR };
	const struct fuse_init_out *io;
	const u8 *reply;
	u32 nreq, len = 0;
	unsigned before;
	bool msix;
	int r;

	check_failures = 0;
	pic_setup(0xff);	/* the MSI-X interrupt comes in through our sti windows */
	if (!virtio_probe(&dev, VIRTIO_ID_FS, 0)) {
		print("FAIL fs: no virtio-fs device\n");
		return 1;
	}
	virtio_cfg_read(&dev, FS_CFG_TAG, tag, FS_TAG_LEN);
	tag[FS_TAG_LEN] = 0;
	virtio_cfg_read(&dev, FS_CFG_NUM_REQ, &nreq, sizeof(nreq));
	print("virtio-fs: tag '");
	print(tag);
	print("', num_request_queues ");
	print_dec(nreq);
	print("\n");
	check("fs-config", tag[0] && nreq >= 1, "empty tag or no request queue: num_request_queues ", nreq);

	if (!fs_start(&msix)) {
		check("fs-start", false, "device set-up failed, status 0x", virtio_status(&dev));
		virtio_reset(&dev);
		return check_failures;
	}
	check("fs-start", true, "", 0);

	before = virtio_msix_count;
	r = fuse_request(FUSE_INIT, 0, &init, sizeof(init), 0, 0, &reply, &len);
	/* The compat size of protocol 7.23+ replies is the whole struct. */
	if (check_reply("fs-init", r, len, sizeof(*io))) {
		/* Each side says the newest it speaks; both then use the older. */
		io = (const struct fuse_init_out *)reply;
		print("virtio-fs: FUSE ");
		print_dec(io->major);
		print(".");
		print_dec(io->minor < FUSE_MINOR ? io->minor : FUSE_MINOR);
		print(" (the back-end speaks 7.");
		print_dec(io->minor);
		print("), max_write ");
		print_dec(io->max_write);
		print("\n");
		check("fs-init-version", io->major == 7 && io->minor >= FUSE_MINOR,
		      "the back-end does not speak 7.31: major*1000+minor ", io->major * 1000 + io->minor);
	}
	/* The back-end signals its call eventfd after it fills the used ring, and the
	 * VMM's device thread turns that into the interrupt: wait on the clock. */
	for (u64 deadline = rdtsc() + (1ULL << 33);
	     msix && virtio_msix_count == before && rdtsc() < deadline;)
		asm volatile("sti; nop; cli; pause" : : : "memory");
	if (!msix)
		check("fs-msix", false, "no MSI-X capability, capability offset ", dev.msix_cap);
	else if (r <= 0)
		check("fs-msix", virtio_msix_count != before,
		      "request done, but no interrupt on vector 0x", VIRTIO_MSIX_VECTOR);
	if (r != 0) {
		virtio_reset(&dev);
		return check_failures;
	}

	if (word_value("fs-file=", name, sizeof(name)))
		read_file(name);
	if (word_value("fs-create=", name, sizeof(name)))
		create_file(name, has_word("fs-ro"));
	if (word_value("fs-hold=", hold_for, sizeof(hold_for)))
		hold(parse_decimal(hold_for, strlen(hold_for)));
	virtio_reset(&dev);
	return check_failures;
}
