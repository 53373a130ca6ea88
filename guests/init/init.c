/*
 * swiftvmm-init: PID 1 for `swiftvmm exec KERNEL -- CMD ARGS...`.
 *
 * swiftvmm builds an initramfs in memory holding this program as /init, the command to run
 * in /swiftvmm/exec.conf (conf.h) and whatever kernel modules the kernel needs to reach the
 * host.  From there this program turns the guest into a window onto the host: the host's /
 * (virtio-fs, read-only) under a tmpfs overlay becomes the root, so the command finds the
 * user's files and programs and may write anywhere without changing the host; the
 * command's stdin, stdout and stderr are virtio-console ports that swiftvmm streams; its
 * status goes back on one more port; then the guest powers off.  README.md is the contract
 * with swiftvmm.
 *
 * Everything that can fail says what failed and why, with the errno text and, where a
 * kernel without some option is the likely cause, that option: the person reading it just
 * built the kernel and wants to know which CONFIG_ to turn on.  Failures go to the kernel log
 * (the serial console swiftvmm keeps), to /dev/console, and, once the status port is open,
 * to swiftvmm as a "fail" line.  Nothing here waits without a deadline except for the
 * command itself, which swiftvmm's --timeout bounds.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/module.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"

#ifndef MODULE_INIT_COMPRESSED_FILE
#define MODULE_INIT_COMPRESSED_FILE 4	/* Linux 5.17's <linux/module.h> */
#endif

#define CONF_PATH	"/swiftvmm/exec.conf"
#define ROOT_TAG	"swiftvmm-root"
#define LOWER		"/swiftvmm/lower"	/* the host's /, read-only */
#define RW		"/swiftvmm/rw"		/* tmpfs: the overlay's upper and work dirs */
#define NEWROOT		"/swiftvmm/root"	/* the overlay: the command's / */

#define PORT_WAIT_MS	10000	/* for the ports to show up in sysfs and /dev */
#define STATUS_WAIT_MS	10000	/* for swiftvmm to take the status line */
#define MOUNT_WAIT_MS	5000	/* for a virtio-fs tag to be known */

enum { PORT_STDIN, PORT_STDOUT, PORT_STDERR, PORT_STATUS, NPORTS };
static const char *const port_names[NPORTS] = {
	"swiftvmm.stdin", "swiftvmm.stdout", "swiftvmm.stderr", "swiftvmm.status",
};
static char port_dev[NPORTS][80];	/* /dev/vportNpM */
static int port_fd[NPORTS] = { -1, -1, -1, -1 };
static int ports_searchable;	/* /dev and /sys are mounted */
static int ports_searched;

static char conf_buf[CONF_MAX_BYTES + 1];
static struct conf conf;

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void power_off(void) __attribute__((noreturn));

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static int write_all(int fd, const char *buf, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, buf, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		buf += w;
		n -= (size_t)w;
	}
	return 0;
}

/* snprintf's length, clamped to what the buffer holds. */
static size_t clamp(int n, size_t cap)
{
	return n < 0 ? 0 : (size_t)n >= cap ? cap - 1 : (size_t)n;
}

/*
 * One line to the kernel log at a level (3 error, 4 warning, 6 info): it lands between the
 * kernel's own messages, with a time stamp, on the serial console swiftvmm records.  Errors
 * also go straight to /dev/console (fd 2), which shows them whatever the log level.  Before
 * devtmpfs is mounted there is no /dev/kmsg, only the console the initramfs brought.
 */
static void log_line(int level, const char *msg)
{
	char line[1024];
	size_t n;
	/* Opened per line: the kernel rate-limits writers per open file (10 lines in 5 s), and a
	 * failure must not be dropped because the module list came before it. */
	int kmsg = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);

	if (kmsg >= 0) {
		n = clamp(snprintf(line, sizeof line, "<%d>swiftvmm-init: %s", level, msg), sizeof line);
		write_all(kmsg, line, n);
		close(kmsg);
	}
	if (level <= 3) {
		n = clamp(snprintf(line, sizeof line - 1, "swiftvmm-init: %s", msg), sizeof line - 1);
		line[n++] = '\n';
		write_all(2, line, n);
	}
}

static void say(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(int level, const char *fmt, ...)
{
	char msg[768];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	log_line(level, msg);
}

/* A value from exec.conf for a message: quoted, control bytes escaped, cut if long. */
static const char *quoted(const char *s)
{
	static char q[4][200];
	static int next;
	char *out = q[next++ % 4];

	conf_quote(s, 120, out, sizeof q[0]);
	return out;
}

/*
 * The virtio-console ports, found by the names swiftvmm gives them.  The kernel creates the
 * port, then learns its name from the host, so a port may be in sysfs with an empty name for
 * a moment; devtmpfs makes its /dev node on its own time too.  Both are polled for.
 */
static ssize_t read_small(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -1;
	do
		n = read(fd, buf, cap - 1);
	while (n < 0 && errno == EINTR);
	close(fd);
	buf[n > 0 ? n : 0] = '\0';
	return n;
}

static unsigned int scan_ports(unsigned int wanted)
{
	DIR *dir = opendir("/sys/class/virtio-ports");
	struct dirent *e;
	unsigned int found = 0;
	int entries = 0;

	if (!dir)
		return 0;
	while ((e = readdir(dir)) && entries++ < 4096) {
		char path[320], name[80];
		int i;

		if (e->d_name[0] == '.' || strlen(e->d_name) > 64)
			continue;
		snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
		if (read_small(path, name, sizeof name) <= 0)
			continue;
		name[strcspn(name, "\n")] = '\0';
		for (i = 0; i < NPORTS; i++) {
			if (!(wanted & (1u << i)) || (found & (1u << i)) || strcmp(name, port_names[i]) != 0)
				continue;
			snprintf(port_dev[i], sizeof port_dev[i], "/dev/%s", e->d_name);
			if (access(port_dev[i], F_OK) == 0)
				found |= 1u << i;
		}
	}
	closedir(dir);
	return found;
}

static unsigned int find_ports(unsigned int wanted, long long deadline)
{
	unsigned int found;

	ports_searched = 1;
	while ((found = scan_ports(wanted)) != wanted && now_ms() < deadline)
		sleep_ms(10);
	return found;
}

/* Why the ports did not come, judged from what the kernel registered. */
static const char *ports_hint(void)
{
	if (access("/sys/bus/pci", F_OK) != 0)
		return "the kernel has no PCI bus (CONFIG_PCI)";
	if (access("/sys/bus/virtio", F_OK) != 0)
		return "the kernel has no virtio bus (CONFIG_VIRTIO_PCI, built in or as a module "
		       "swiftvmm found)";
	if (access("/sys/bus/pci/drivers/virtio-pci", F_OK) != 0)
		return "the kernel has no virtio-pci driver (CONFIG_VIRTIO_PCI)";
	if (access("/sys/bus/virtio/drivers/virtio_console", F_OK) != 0)
		return "the kernel has no virtio console driver (CONFIG_VIRTIO_CONSOLE)";
	return "the virtio console driver is there but no port has this name";
}

/* stdin is read, the others written; the status port without blocking, so that a host that
 * never takes the line cannot hold the guest up for ever (send_status). */
static int open_port(int i)
{
	static const int flags[NPORTS] = {
		O_RDONLY, O_WRONLY, O_WRONLY, O_WRONLY | O_NONBLOCK,
	};

	port_fd[i] = open(port_dev[i], flags[i] | O_CLOEXEC | O_NOCTTY);
	return port_fd[i];
}

static void send_status(const char *line)
{
	long long deadline = now_ms() + STATUS_WAIT_MS;
	size_t len = strlen(line), done = 0;

	/* A port write blocks (here: EAGAIN) until swiftvmm has the port open. */
	while (done < len) {
		ssize_t n = write(port_fd[PORT_STATUS], line + done, len - done);

		if (n > 0) {
			done += (size_t)n;
			continue;
		}
		if (n < 0 && errno != EAGAIN && errno != EINTR) {
			say(3, "writing the status line to %s: %s", port_dev[PORT_STATUS], strerror(errno));
			return;
		}
		if (now_ms() >= deadline) {
			say(3, "swiftvmm did not take the status line from %s within %d s",
			    port_dev[PORT_STATUS], STATUS_WAIT_MS / 1000);
			return;
		}
		sleep_ms(10);
	}
}

/*
 * Every setup failure ends here: the message to the kernel log and the console, then to
 * swiftvmm as "fail MESSAGE" if the status port can be had, then power off.  A failure
 * before the ports were looked for (a bad exec.conf, a module the kernel refused) still
 * tries to find the status port, since the kernel may have the console driver built in.
 */
static void die(const char *fmt, ...)
{
	static int dying;
	char msg[768], line[800];
	va_list ap;
	char *p;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	for (p = msg; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	log_line(3, msg);
	if (!dying) {
		dying = 1;
		if (port_fd[PORT_STATUS] < 0 && ports_searchable && !ports_searched &&
		    find_ports(1u << PORT_STATUS, now_ms() + PORT_WAIT_MS) && open_port(PORT_STATUS) < 0)
			say(3, "open %s: %s", port_dev[PORT_STATUS], strerror(errno));
		if (port_fd[PORT_STATUS] >= 0) {
			snprintf(line, sizeof line, "fail %s\n", msg);
			send_status(line);
		}
	}
	power_off();
}

static void power_off(void)
{
	sync();
	reboot(RB_POWER_OFF);
	/* Only a kernel that cannot power off gets here.  PID 1 exiting makes it panic, which
	 * ends the VM too, and swiftvmm reports the panic. */
	say(3, "power off: %s", strerror(errno));
	_exit(1);
}

static void mkdir_p(const char *path)
{
	char p[CONF_MAX_PATH + 64];
	size_t n = strlen(path), i;

	if (n >= sizeof p)
		die("mkdir %s: the path is too long", quoted(path));
	memcpy(p, path, n + 1);
	for (i = 1; i <= n; i++) {
		char c = p[i];

		if (c != '/' && c != '\0')
			continue;
		p[i] = '\0';
		if (mkdir(p, 0755) != 0 && errno != EEXIST)
			die("mkdir %s: %s", quoted(p), strerror(errno));
		p[i] = c;
	}
}

/* The kernel option behind each file system type, for mount's ENODEV ("unknown type"). */
static const char *fs_config(const char *type)
{
	static const char *const table[][2] = {
		{ "devtmpfs", "CONFIG_DEVTMPFS" },
		{ "proc", "CONFIG_PROC_FS" },
		{ "sysfs", "CONFIG_SYSFS" },
		{ "tmpfs", "CONFIG_TMPFS" },
		{ "virtiofs", "CONFIG_VIRTIO_FS, which needs CONFIG_FUSE_FS" },
		{ "overlay", "CONFIG_OVERLAY_FS" },
		{ "devpts", "CONFIG_UNIX98_PTYS" },
	};
	size_t i;

	for (i = 0; type && i < sizeof table / sizeof table[0]; i++)
		if (strcmp(type, table[i][0]) == 0)
			return table[i][1];
	return NULL;
}

static void mount_or_die(const char *src, const char *target, const char *type,
			 unsigned long flags, const char *data)
{
	const char *config;
	int e;

	if (mount(src, target, type, flags, data) == 0)
		return;
	e = errno;
	config = e == ENODEV ? fs_config(type) : NULL;
	if (config)
		die("mount %s on %s: %s: the kernel has no %s file system (%s)", type, quoted(target),
		    strerror(e), type, config);
	die("mount %s on %s%s: %s", type ? type : quoted(src), quoted(target),
	    flags & MS_MOVE ? " (move)" : flags & MS_BIND ? " (bind)" : "", strerror(e));
}

/*
 * A virtio-fs share by its tag.  The kernel answers EINVAL for a tag no device has; a
 * device probed a little late is waited for, briefly.
 */
static void mount_virtiofs(const char *tag, const char *target, unsigned long flags)
{
	long long deadline = now_ms() + MOUNT_WAIT_MS;

	while (mount(tag, target, "virtiofs", flags, NULL) != 0) {
		int e = errno;

		if (e == EINTR || (e == EINVAL && now_ms() < deadline)) {
			sleep_ms(10);
			continue;
		}
		if (e == EINVAL)
			die("mount virtio-fs %s on %s: %s: no virtio-fs device has this tag (is "
			    "virtiofsd serving it?)", quoted(tag), quoted(target), strerror(e));
		if (e == ENODEV)
			die("mount virtio-fs %s on %s: %s: the kernel has no virtiofs file system (%s)",
			    quoted(tag), quoted(target), strerror(e), fs_config("virtiofs"));
		die("mount virtio-fs %s on %s: %s", quoted(tag), quoted(target), strerror(e));
	}
}

/* 1. The kernel's views the rest needs: device nodes (the ports), proc, sysfs. */
static void mount_early(void)
{
	int fd;

	mkdir_p("/dev");
	mount_or_die("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	mkdir_p("/proc");
	mount_or_die("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mkdir_p("/sys");
	mount_or_die("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);

	/* Without /dev/console in the initramfs the kernel starts PID 1 with no fds 0-2; the
	 * first files opened would land there and a message meant for the console would go
	 * into a port.  Opening the console now takes the lowest free numbers. */
	for (fd = 0; fd < 3; fd++)
		if (fcntl(fd, F_GETFD) < 0 && open("/dev/console", O_RDWR | O_NOCTTY) < 0 &&
		    open("/dev/null", O_RDWR) < 0)
			die("no console and no /dev/null for fd %d: %s", fd, strerror(errno));
	ports_searchable = 1;
}

/* 2. What to run, and the modules that get the kernel to the host's devices. */
static void read_conf(void)
{
	char err[640];
	size_t len;

	if (conf_read_file(CONF_PATH, conf_buf, sizeof conf_buf, &len, err, sizeof err) != 0)
		die("%s", err);
	if (conf_parse(conf_buf, len, &conf, err, sizeof err) != 0)
		die("%s: %s", CONF_PATH, err);
}

static const char *module_hint(int e, int compressed)
{
	if (compressed && (e == EOPNOTSUPP || e == EINVAL))
		return "this kernel does not decompress modules itself (CONFIG_MODULE_DECOMPRESS, "
		       "Linux 5.17 or newer); give swiftvmm a tree with uncompressed .ko files";
	switch (e) {
	case ENOEXEC:
		return "not a module this kernel can load: built for another kernel?";
	case ENOENT:
		return "it uses a symbol no loaded module has: a dependency is missing";
	case EKEYREJECTED:
	case ENOKEY:
		return "its signature was not accepted (module signature enforcement)";
	case EPERM:
		return "module loading is not permitted here (lockdown?)";
	case ENOSYS:
		return "the kernel has no module support (CONFIG_MODULES)";
	default:
		return "the kernel log above says more";
	}
}

static void load_modules(void)
{
	size_t i;

	for (i = 0; i < conf.nmodules; i++) {
		const char *path = conf.modules[i];
		int compressed = conf_module_compressed(path) > 0;
		int fd = open(path, O_RDONLY | O_CLOEXEC);

		if (fd < 0)
			die("module %s: %s", quoted(path), strerror(errno));
		/* EEXIST: loaded already, or built in under the same name.  Either is fine. */
		if (syscall(SYS_finit_module, fd, "", compressed ? MODULE_INIT_COMPRESSED_FILE : 0) != 0 &&
		    errno != EEXIST) {
			int e = errno;

			close(fd);
			die("the kernel refused module %s: %s: %s", quoted(path), strerror(e),
			    module_hint(e, compressed));
		}
		close(fd);
		say(6, "loaded %s", quoted(path));
	}
}

/* 3. The ports, the status port first so that a failure from here on reaches swiftvmm. */
static void open_ports(void)
{
	unsigned int all = (1u << NPORTS) - 1, found;
	char missing[256] = "";
	int i;

	found = find_ports(all, now_ms() + PORT_WAIT_MS);
	if ((found & (1u << PORT_STATUS)) && open_port(PORT_STATUS) < 0)
		die("open %s (%s): %s", port_dev[PORT_STATUS], port_names[PORT_STATUS], strerror(errno));
	if (found != all) {
		for (i = 0; i < NPORTS; i++)
			if (!(found & (1u << i)))
				snprintf(missing + strlen(missing), sizeof missing - strlen(missing), "%s%s",
					 *missing ? ", " : "", port_names[i]);
		die("no virtio console port named %s after %d s: %s", missing, PORT_WAIT_MS / 1000,
		    ports_hint());
	}
	for (i = 0; i < NPORTS; i++)
		if (port_fd[i] < 0 && open_port(i) < 0)
			die("open %s (%s): %s", port_dev[i], port_names[i], strerror(errno));
}

/* 4. The new root. */
static int have_filesystem(const char *type)
{
	static char list[16384];
	static ssize_t len = -1;
	const char *line;

	if (len < 0 && (len = read_small("/proc/filesystems", list, sizeof list)) < 0)
		die("/proc/filesystems: %s", strerror(errno));
	/* Lines are "nodev\tNAME" or "\tNAME". */
	for (line = list; *line; ) {
		const char *end = strchr(line, '\n'), *tab = strchr(line, '\t');
		size_t n;

		if (!end)
			end = line + strlen(line);
		if (tab && tab < end) {
			n = (size_t)(end - tab - 1);
			if (n == strlen(type) && memcmp(tab + 1, type, n) == 0)
				return 1;
		}
		line = *end ? end + 1 : end;
	}
	return 0;
}

static void check_filesystems(void)
{
	static const char *const needed[] = { "tmpfs", "virtiofs", "overlay" };
	char missing[512] = "";
	size_t i;

	for (i = 0; i < sizeof needed / sizeof needed[0]; i++)
		if (!have_filesystem(needed[i]))
			snprintf(missing + strlen(missing), sizeof missing - strlen(missing), "%s%s (%s)",
				 *missing ? ", " : "", needed[i], fs_config(needed[i]));
	if (*missing)
		die("the kernel lacks file systems swiftvmm exec needs: %s", missing);
}

/*
 * The host's / read-only as the lower layer, a tmpfs as the upper: the command sees the
 * host's files and may change any of them, and every change stays in the guest's RAM.
 */
static void mount_root(void)
{
	mkdir_p(LOWER);
	mount_virtiofs(ROOT_TAG, LOWER, MS_RDONLY);
	mkdir_p(RW);
	mount_or_die("tmpfs", RW, "tmpfs", 0, "mode=0755");
	mkdir_p(RW "/upper");
	mkdir_p(RW "/work");
	mkdir_p(NEWROOT);
	mount_or_die("overlay", NEWROOT, "overlay", 0,
		     "lowerdir=" LOWER ",upperdir=" RW "/upper,workdir=" RW "/work");
}

/*
 * busybox switch_root's way: the initramfs (rootfs) cannot be unmounted or pivoted away, so
 * the new root is moved on top of it and chrooted into.  busybox also deletes the
 * initramfs's files to free their RAM; these are a few hundred KiB and stay.
 */
static void switch_root(void)
{
	static const char *const moved[] = { "/dev", "/proc", "/sys" };
	char target[64];
	size_t i;

	for (i = 0; i < sizeof moved / sizeof moved[0]; i++) {
		snprintf(target, sizeof target, NEWROOT "%s", moved[i]);
		mkdir_p(target);
		mount_or_die(moved[i], target, NULL, MS_MOVE, NULL);
	}
	if (chdir(NEWROOT) != 0)
		die("chdir %s: %s", NEWROOT, strerror(errno));
	mount_or_die(".", "/", NULL, MS_MOVE, NULL);
	if (chroot(".") != 0)
		die("chroot %s: %s", NEWROOT, strerror(errno));
	if (chdir("/") != 0)
		die("chdir / in the new root: %s", strerror(errno));
}

/*
 * What udev or systemd would add to /dev and programs expect: ptys (script, ssh), POSIX
 * shared memory, /dev/fd for bash's process substitution.  Most commands run without them,
 * so a kernel that lacks one gets a warning, not a failure.
 */
static void dev_extras(void)
{
	static const char *const links[][2] = {
		{ "/proc/self/fd", "/dev/fd" }, { "/proc/self/fd/0", "/dev/stdin" },
		{ "/proc/self/fd/1", "/dev/stdout" }, { "/proc/self/fd/2", "/dev/stderr" },
	};
	size_t i;

	if ((mkdir("/dev/pts", 0755) != 0 && errno != EEXIST) ||
	    mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "mode=0620,ptmxmode=0666") != 0)
		say(4, "no /dev/pts: %s", strerror(errno));
	if ((mkdir("/dev/shm", 01777) != 0 && errno != EEXIST) ||
	    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") != 0)
		say(4, "no /dev/shm: %s", strerror(errno));
	for (i = 0; i < sizeof links / sizeof links[0]; i++)
		if (symlink(links[i][0], links[i][1]) != 0 && errno != EEXIST)
			say(4, "symlink %s -> %s: %s", links[i][1], links[i][0], strerror(errno));
}

/*
 * In the new root, so that a path through an absolute symlink on the host (/home ->
 * /data/home) resolves as it does there, not inside the initramfs.  /tmp comes first so that
 * a writable share below /tmp is not hidden by it.
 */
static void mount_late(void)
{
	struct utsname u;
	char target[CONF_MAX_PATH + 80];
	size_t i;

	dev_extras();
	mkdir_p("/tmp");
	mount_or_die("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	mkdir_p("/run");
	mount_or_die("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
	for (i = 0; i < conf.nrw; i++) {
		mkdir_p(conf.rw[i].path);
		mount_virtiofs(conf.rw[i].tag, conf.rw[i].path, 0);
	}
	if (conf.modules_dir) {
		if (uname(&u) != 0)
			die("uname: %s", strerror(errno));
		snprintf(target, sizeof target, "/lib/modules/%s", u.release);
		mkdir_p(target);
		mount_or_die(conf.modules_dir, target, NULL, MS_BIND, NULL);
	}
}

/*
 * 5. The command.  The child reports a failure before exec (a uid it cannot take, a
 * directory it cannot enter) through a close-on-exec pipe, so that it becomes a "fail" line
 * like every other setup failure; an exec that fails is the command's own failure, told on
 * its stderr with the shell's statuses (127 not found, 126 anything else).
 */
static void child_fail(int fd, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
static void child_fail(int fd, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	write_all(fd, msg, strlen(msg));
	_exit(127);
}

static void child_exec(int errfd)
{
	int e;

	if (setsid() < 0)
		child_fail(errfd, "setsid: %s", strerror(errno));
	if (setgroups(conf.ngroups, conf.groups) != 0)
		child_fail(errfd, "setgroups (%zu groups): %s", conf.ngroups, strerror(errno));
	if (setgid(conf.gid) != 0)
		child_fail(errfd, "setgid %u: %s", (unsigned)conf.gid, strerror(errno));
	if (setuid(conf.uid) != 0)
		child_fail(errfd, "setuid %u: %s", (unsigned)conf.uid, strerror(errno));
	/* As the user, so the host's permissions decide, as they would for a cd there. */
	if (chdir(conf.cwd) != 0)
		child_fail(errfd, "chdir %s as uid %u: %s", quoted(conf.cwd), (unsigned)conf.uid,
			   strerror(errno));
	if (dup2(port_fd[PORT_STDIN], 0) < 0 || dup2(port_fd[PORT_STDOUT], 1) < 0 ||
	    dup2(port_fd[PORT_STDERR], 2) < 0)
		child_fail(errfd, "the ports as stdin, stdout, stderr (dup2): %s", strerror(errno));
	/* execvp looks PATH up in environ: the command's own environment, not init's. */
	environ = conf.envp;
	execvp(conf.argv[0], conf.argv);
	e = errno;
	dprintf(2, "swiftvmm-init: cannot run %s: %s\n", quoted(conf.argv[0]), strerror(e));
	_exit(e == ENOENT ? 127 : 126);
}

static int run_command(void)
{
	char msg[512];
	size_t got = 0;
	int pipefd[2], wstatus = 0;
	pid_t child;

	if (pipe2(pipefd, O_CLOEXEC) != 0)
		die("pipe: %s", strerror(errno));
	say(6, "running %s as uid %u gid %u in %s", quoted(conf.argv[0]), (unsigned)conf.uid,
	    (unsigned)conf.gid, quoted(conf.cwd));
	child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0)
		child_exec(pipefd[1]);
	close(pipefd[1]);
	/* Nothing before EOF: exec closed the pipe, the command runs. */
	while (got < sizeof msg - 1) {
		ssize_t n = read(pipefd[0], msg + got, sizeof msg - 1 - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(pipefd[0]);
	msg[got] = '\0';
	/* For the host's timings (--report): the command is running from here. */
	if (!got)
		send_status("start\n");

	/* 6. PID 1 is every orphan's parent: reap them all until the command itself is done. */
	for (;;) {
		pid_t pid = waitpid(-1, &wstatus, 0);

		if (pid == child)
			break;
		if (pid < 0 && errno != EINTR)
			die("waiting for the command (pid %d): %s", (int)child, strerror(errno));
	}
	if (got)
		die("starting %s: %s", quoted(conf.argv[0]), msg);
	if (WIFEXITED(wstatus))
		return WEXITSTATUS(wstatus);
	return 128 + WTERMSIG(wstatus);
}

int main(void)
{
	char line[32];
	int status, i;

	/* As anything but PID 1 this would mount over /dev and power the machine off. */
	if (getpid() != 1) {
		fprintf(stderr, "swiftvmm-init: this is the init of swiftvmm exec's initramfs and runs "
			"only as PID 1 (this is PID %d)\n", (int)getpid());
		return 64;
	}
	mount_early();
	read_conf();
	load_modules();
	open_ports();
	check_filesystems();
	mount_root();
	switch_root();
	mount_late();
	status = run_command();

	/* Our copies of the stdio ports: closing them tells swiftvmm the guest side is done
	 * with them once the command's processes are too. */
	for (i = PORT_STDIN; i <= PORT_STDERR; i++)
		close(port_fd[i]);
	say(6, "%s exited with status %d", quoted(conf.argv[0]), status);
	/* 7. */
	snprintf(line, sizeof line, "status %d\n", status);
	send_status(line);
	/* 8. */
	power_off();
}
