/*
 * check-parse: the init's exec.conf parser as a host program, for swiftvmm's tests.
 *
 *	build/check-parse FILE
 *
 * Prints what the init would do with FILE, one line per item, in a fixed order, with every
 * value quoted as conf_quote does (printable ASCII as is, \" \\ and \xNN for the rest), and
 * exits 0; or prints "fail MESSAGE", the line the init would send to swiftvmm, and exits 1.
 * The tests compare this with what the Swift encoder meant, so both sides are checked against
 * each other without booting anything.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"

static char buf[CONF_MAX_BYTES + 1];
static struct conf conf;

/* Whole values, never cut: the test compares them byte for byte. */
static void print_quoted(const char *s)
{
	static char q[4 * CONF_MAX_BYTES + 8];

	conf_quote(s, strlen(s), q, sizeof q);
	fputs(q, stdout);
}

int main(int argc, char **argv)
{
	char err[1024];
	size_t len, i;

	if (argc != 2) {
		fprintf(stderr, "usage: check-parse FILE\n");
		return 64;
	}
	if (conf_read_file(argv[1], buf, sizeof buf, &len, err, sizeof err) != 0 ||
	    conf_parse(buf, len, &conf, err, sizeof err) != 0) {
		printf("fail %s\n", err);
		return 1;
	}
	for (i = 0; i < conf.argc; i++) {
		fputs("arg ", stdout);
		print_quoted(conf.argv[i]);
		putchar('\n');
	}
	for (i = 0; i < conf.envc; i++) {
		fputs("env ", stdout);
		print_quoted(conf.envp[i]);
		putchar('\n');
	}
	fputs("cwd ", stdout);
	print_quoted(conf.cwd);
	printf("\nuid %u\ngid %u\ngroups", (unsigned)conf.uid, (unsigned)conf.gid);
	for (i = 0; i < conf.ngroups; i++)
		printf("%c%u", i ? ',' : ' ', (unsigned)conf.groups[i]);
	putchar('\n');
	for (i = 0; i < conf.nrw; i++) {
		fputs("rw ", stdout);
		print_quoted(conf.rw[i].tag);
		putchar(' ');
		print_quoted(conf.rw[i].path);
		putchar('\n');
	}
	if (conf.modules_dir) {
		fputs("modules-dir ", stdout);
		print_quoted(conf.modules_dir);
		putchar('\n');
	}
	for (i = 0; i < conf.nmodules; i++) {
		printf("module%s ", conf_module_compressed(conf.modules[i]) ? " compressed" : "");
		print_quoted(conf.modules[i]);
		putchar('\n');
	}
	return 0;
}
