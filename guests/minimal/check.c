/*
 * check.c: one PASS or FAIL line per check, for tests.c and virtio_tests.c.
 */
#include "check.h"

int check_failures;

void check(const char *name, bool ok, const char *why, long value)
{
	size_t n = strlen(why);

	print(ok ? "PASS " : "FAIL ");
	print(name);
	if (!ok) {
		print(": ");
		print(why);
		if (n >= 2 && why[n - 2] == '0' && why[n - 1] == 'x')
			print_hex(value);
		else
			print_dec(value);
		check_failures++;
	}
	print("\n");
}
