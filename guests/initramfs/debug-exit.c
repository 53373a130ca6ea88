/*
 * swiftvmm-exit: end the VM with a status, from Linux user space.
 *
 *	swiftvmm-exit [-n] STATUS [PORT]
 *
 * swiftvmm --debug-exit (like QEMU's isa-debug-exit) ends the run when the guest writes a
 * value V to port 0xf4, and exits with (V << 1) | 1.  A shell script could reach the port
 * through /dev/port, but Debian's kernels are built without CONFIG_DEVPORT, so the test
 * init (scripts/make-initramfs) carries this instead: ioperm() lets this process at the
 * port's four bytes, and one outl() of the status does the rest.
 *
 * STATUS is a shell exit status, 0 to 255.  swiftvmm's exit code keeps only the low 8 bits
 * of (V << 1) | 1, so it shows statuses up to 127 (128 + n looks like n); its --report
 * JSON holds the whole value.  PORT is 0 to 0xfffc, decimal or 0x-hex, as --debug-exit=PORT.
 *
 * -n says what it would write, takes the port, and writes nothing: on a host, port 0xf4 is
 * real hardware (or nothing), so the tests use -n there.
 *
 * Exit codes: 64 bad arguments; 1 no access to the port (not root, or a kernel without
 * CONFIG_X86_IOPL_IOPERM, or a locked-down one); 2 the write came back, so nothing listened
 * on the port (swiftvmm without --debug-exit) and the VM goes on.
 *
 * The initramfs has no C library, so scripts/make-initramfs builds this with gcc -static.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>

/* A whole number, decimal or 0x-hex, from 0 to max; -1 for anything else.  The first-digit
 * check is there because strtoul would skip spaces and take "-1" (as ULONG_MAX). */
static long number(const char *s, long max)
{
	int base = s[0] == '0' && (s[1] == 'x' || s[1] == 'X') ? 16 : 10;
	const char *digits = base == 16 ? s + 2 : s;
	char *end;
	unsigned long v;

	if (!isxdigit((unsigned char)*digits))
		return -1;
	errno = 0;
	v = strtoul(digits, &end, base);
	if (errno || *end || v > (unsigned long)max)
		return -1;
	return (long)v;
}

int main(int argc, char **argv)
{
	int dry_run = argc > 1 && strcmp(argv[1], "-n") == 0;
	long status, port = 0xf4;

	argc -= dry_run;
	argv += dry_run;
	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: swiftvmm-exit [-n] STATUS [PORT]   (STATUS 0-255; PORT default 0xf4)\n");
		return 64;
	}
	status = number(argv[1], 255);
	if (status < 0) {
		fprintf(stderr, "swiftvmm-exit: status '%s' is not a number from 0 to 255\n", argv[1]);
		return 64;
	}
	if (argc == 3 && (port = number(argv[2], 0xfffc)) < 0) {
		fprintf(stderr, "swiftvmm-exit: port '%s' is not a port number (0-0xfffc)\n", argv[2]);
		return 64;
	}

	if (dry_run)
		printf("swiftvmm-exit: would write %ld to port %#lx\n", status, port);

	/* Ports are a privilege (CAP_SYS_RAWIO): the VM's init has it, a user's shell does not. */
	if (ioperm(port, 4, 1) != 0) {
		fprintf(stderr, "swiftvmm-exit: no access to port %#lx: %s (needs root and a kernel "
			"with CONFIG_X86_IOPL_IOPERM)\n", port, strerror(errno));
		return 1;
	}
	if (dry_run)
		return 0;

	/* One 4-byte write, as QEMU's isa-debug-exit expects; with --debug-exit it never returns. */
	outl(status, port);

	fprintf(stderr, "swiftvmm-exit: wrote %ld to port %#lx and the VM goes on (swiftvmm without "
		"--debug-exit?)\n", status, port);
	return 2;
}
