/*
 * virtio_net.c: test=net.
 */
#include "virtio.h"

int test_net(const char *cmdline)
{
	(void)cmdline;
	print("FAIL net: not implemented yet\n");
	return 1;
}
