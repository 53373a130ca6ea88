/*
 * cmdline.c: where the VMM left the command line, and looking words up in it.
 * main.c runs the words; a mode that needs a "name=value" word of its own
 * (test=net's ip= and peer=) finds it here, wherever it stands on the line.
 */
#include "cmdline.h"

#define BP_EXT_CMD_LINE_PTR	0x0c8
#define BP_CMD_LINE_PTR		0x228
#define HVM_START_MAGIC		0x336ec578

struct hvm_start_info {
	u32 magic, version, flags, nr_modules;
	u64 modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
	u32 memmap_entries, reserved;
};

static const char *cmdline = "";

/*
 * A Linux boot_params has the line's address in two u32 halves; PVH's
 * hvm_start_info has it whole, after a magic we check.  Anything above the
 * 4 GiB our page tables map cannot be read.
 */
const char *cmdline_init(u64 boot_params, u64 start_info)
{
	u64 addr = 0;

	if (boot_params && boot_params < MAPPED_LIMIT) {
		addr = *(const u32 *)(boot_params + BP_CMD_LINE_PTR) |
		       (u64)*(const u32 *)(boot_params + BP_EXT_CMD_LINE_PTR) << 32;
	} else if (start_info) {
		const struct hvm_start_info *si = (const void *)start_info;

		if (si->magic == HVM_START_MAGIC) {
			addr = si->cmdline_paddr;
		} else {
			print("minimal: bad hvm_start_info magic 0x");
			print_hex(si->magic);
			print("\n");
		}
	}
	if (addr >= MAPPED_LIMIT) {
		print("minimal: command line above 4 GiB ignored\n");
		addr = 0;
	}
	cmdline = addr ? (const char *)addr : "";
	return cmdline;
}

bool word_is(const char *w, size_t n, const char *s)
{
	return strlen(s) == n && memcmp(w, s, n) == 0;
}

const char *cmdline_value(const char *name)
{
	size_t n = strlen(name);

	for (const char *p = cmdline; *p; p++)
		if ((p == cmdline || p[-1] == ' ') && strncmp(p, name, n) == 0)
			return p + n;
	return NULL;
}
