/*
 * hypercall.c: whether there is a swiftvmm hypercall page to call.  Under
 * another VMM, 0x2000 is ordinary RAM (or nothing), and a call there would
 * run whatever it holds; so the guest looks for the magic once, at boot.
 */
#include "hypercall.h"

bool have_hypercalls;

void hypercall_init(void)
{
	have_hypercalls = memcmp((const void *)hypercall_info.magic, "SWIFTVMM", 8) == 0;
}
