/*
 * pci.c: PCI configuration mechanism #1 on bus 0.
 *
 * The address of a configuration register goes into port 0xcf8 (bit 31 =
 * enable, bus in 23:16, device in 15:11, function in 10:8, dword in 7:2) and
 * its data comes through 0xcfc-0xcff.  That is two port exits per access, so
 * we remember the last address written and skip the 0xcf8 write when the
 * next access is to the same dword.
 */
#include "pci.h"

#define PCI_ADDR	0xcf8
#define PCI_DATA	0xcfc

static u32 last_addr;

static void pci_select(u8 devfn, u8 reg)
{
	u32 addr = 0x80000000u | (u32)devfn << 8 | (reg & 0xfc);

	if (addr != last_addr) {
		outl(PCI_ADDR, addr);
		last_addr = addr;
	}
}

u32 pci_read32(u8 devfn, u8 reg)
{
	pci_select(devfn, reg);
	return inl(PCI_DATA);
}

u16 pci_read16(u8 devfn, u8 reg)
{
	pci_select(devfn, reg);
	return inw(PCI_DATA + (reg & 2));
}

u8 pci_read8(u8 devfn, u8 reg)
{
	pci_select(devfn, reg);
	return inb(PCI_DATA + (reg & 3));
}

void pci_write32(u8 devfn, u8 reg, u32 v)
{
	pci_select(devfn, reg);
	outl(PCI_DATA, v);
}

void pci_write16(u8 devfn, u8 reg, u16 v)
{
	pci_select(devfn, reg);
	outw(PCI_DATA + (reg & 2), v);
}

/*
 * The scan reads one dword per device slot (vendor and device ID; 0xffff
 * means nothing there), and functions 1-7 only where function 0 says it is
 * a multi-function device (header type bit 7).
 */
static struct pci_dev found[64];
static int nr_found = -1;

int pci_devices(const struct pci_dev **list)
{
	if (nr_found < 0) {
		nr_found = 0;
		for (u8 dev = 0; dev < 32; dev++) {
			for (u8 fn = 0; fn < 8; fn++) {
				u8 devfn = dev << 3 | fn;
				u32 id = pci_read32(devfn, PCI_VENDOR_ID);

				if ((id & 0xffff) == 0xffff) {
					if (fn == 0)
						break;
					continue;
				}
				if (nr_found < (int)(sizeof(found) / sizeof(found[0]))) {
					struct pci_dev *d = &found[nr_found++];

					d->devfn = devfn;
					d->vendor = id & 0xffff;
					d->device = id >> 16;
					d->subsystem = pci_read16(devfn, PCI_SUBSYSTEM_ID);
				}
				if (fn == 0 && !(pci_read8(devfn, PCI_HEADER_TYPE) & 0x80))
					break;
			}
		}
	}
	*list = found;
	return nr_found;
}

/*
 * The size of a memory BAR, the classic way: write all ones, read back the
 * mask of address bits the device decodes, put the old value back.  Memory
 * decoding is off meanwhile, so the device never answers at a half-written
 * address.  (64-bit BARs are assumed to be smaller than 4 GiB.)
 */
static u32 bar_size(u8 devfn, u8 reg, u32 old)
{
	u16 cmd = pci_read16(devfn, PCI_COMMAND);
	u32 mask;

	pci_write16(devfn, PCI_COMMAND, cmd & ~PCI_CMD_MEMORY);
	pci_write32(devfn, reg, 0xffffffff);
	mask = pci_read32(devfn, reg) & ~0xfu;
	pci_write32(devfn, reg, old);
	pci_write16(devfn, PCI_COMMAND, cmd);
	return -mask;
}

/*
 * Where to put BARs nobody assigned (or that firmware put above 4 GiB,
 * e.g. 64-bit BARs under some QEMU set-ups): first fit in 0xc0000000 up to
 * the IOAPIC at 0xfec00000 (on q35, MMCONFIG ends at 0xc0000000), around
 * every memory BAR already assigned below 4 GiB.  Finding those costs a few
 * hundred port exits, so it happens only when a BAR needs a home.
 */
#define WINDOW_FLOOR	0xc0000000u
#define WINDOW_LIMIT	0xfec00000u

static struct { u32 base, size; } used[64];
static int nr_used = -1;

static void find_used_ranges(void)
{
	const struct pci_dev *devs;
	int n = pci_devices(&devs);

	nr_used = 0;
	for (int i = 0; i < n; i++) {
		for (int bar = 0; bar < 6; bar++) {
			u8 reg = PCI_BAR0 + 4 * bar;
			u32 lo = pci_read32(devs[i].devfn, reg), hi = 0;

			if (lo & 1)
				continue;			/* I/O BAR */
			if ((lo & 6) == 4)
				hi = pci_read32(devs[i].devfn, PCI_BAR0 + 4 * ++bar);
			if (hi || !(lo & ~0xfu) || nr_used == (int)(sizeof(used) / sizeof(used[0])))
				continue;
			used[nr_used].base = lo & ~0xfu;
			used[nr_used++].size = bar_size(devs[i].devfn, reg, lo);
		}
	}
}

/* A free, naturally aligned range of 'size' bytes in the window, or 0. */
static u32 window_alloc(u32 size)
{
	u64 addr = WINDOW_FLOOR;

	if (nr_used < 0)
		find_used_ranges();
	for (int i = 0; i < nr_used; i++) {
		u64 end = (u64)used[i].base + used[i].size;

		if (addr < end && used[i].base < addr + size) {
			addr = (end + size - 1) & ~((u64)size - 1);
			i = -1;				/* moved: check them all again */
		}
	}
	if (addr + size > WINDOW_LIMIT || nr_used == (int)(sizeof(used) / sizeof(used[0])))
		return 0;
	used[nr_used].base = addr;
	used[nr_used++].size = size;
	return addr;
}

u64 pci_bar_address(u8 devfn, int bar)
{
	u8 reg = PCI_BAR0 + 4 * bar;
	u32 lo, size;
	bool is64;
	u64 addr;
	u16 cmd;

	if (bar < 0 || bar > 5)
		return 0;
	lo = pci_read32(devfn, reg);
	if (lo & 1)
		return 0;
	is64 = (lo & 6) == 4;
	addr = lo & ~0xfu;
	if (is64)
		addr |= (u64)pci_read32(devfn, reg + 4) << 32;
	if (addr && addr < MAPPED_LIMIT)
		return addr;

	size = bar_size(devfn, reg, 0);
	addr = size ? window_alloc(size) : 0;
	if (!addr) {
		print("pci: no room below 4 GiB for a BAR of size 0x");
		print_hex(size);
		print("\n");
		return 0;
	}
	cmd = pci_read16(devfn, PCI_COMMAND);
	pci_write16(devfn, PCI_COMMAND, cmd & ~PCI_CMD_MEMORY);
	pci_write32(devfn, reg, (u32)addr);
	if (is64)
		pci_write32(devfn, reg + 4, 0);
	pci_write16(devfn, PCI_COMMAND, cmd);
	return addr;
}
