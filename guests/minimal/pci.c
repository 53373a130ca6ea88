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
 * Where to put BARs nobody assigned (or that firmware put above 4 GiB, e.g.
 * 64-bit BARs under some QEMU set-ups).  We start above the highest memory
 * BAR already assigned below 4 GiB, rounded up to 256 MiB so that a BAR we
 * cannot size without disturbing it is not overlapped, but at least at
 * 0xc0000000 (on q35, MMCONFIG ends there), and we stay below the IOAPIC.
 */
#define WINDOW_FLOOR	0xc0000000u
#define WINDOW_LIMIT	0xfec00000u

static u64 window_next;

static u64 window_start(void)
{
	const struct pci_dev *devs;
	int n = pci_devices(&devs);
	u64 top = WINDOW_FLOOR;

	for (int i = 0; i < n; i++) {
		for (int bar = 0; bar < 6; bar++) {
			u32 lo = pci_read32(devs[i].devfn, PCI_BAR0 + 4 * bar);
			u64 hi = 0;

			if (lo & 1)
				continue;			/* I/O BAR */
			if ((lo & 6) == 4)
				hi = pci_read32(devs[i].devfn, PCI_BAR0 + 4 * ++bar);
			if (!hi && (lo & ~0xfu) >= top && (lo & ~0xfu) < WINDOW_LIMIT)
				top = ((u64)(lo & ~0xfu) + 0x10000000) & ~0xfffffffULL;
		}
	}
	return top;
}

u64 pci_bar_address(u8 devfn, int bar)
{
	u8 reg = PCI_BAR0 + 4 * bar;
	u32 lo, mask;
	bool is64;
	u64 addr, size;
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

	/* Size it the classic way (write all ones, read back the mask) with
	 * memory decoding off, so the device never sees a half-moved BAR. */
	cmd = pci_read16(devfn, PCI_COMMAND);
	pci_write16(devfn, PCI_COMMAND, cmd & ~PCI_CMD_MEMORY);
	pci_write32(devfn, reg, 0xffffffff);
	mask = pci_read32(devfn, reg) & ~0xfu;
	size = (u32)-mask;
	if (!window_next)
		window_next = window_start();
	addr = (window_next + size - 1) & ~(size - 1);
	if (!mask || addr + size > WINDOW_LIMIT) {
		print("pci: no room below 4 GiB for a BAR of size 0x");
		print_hex(size);
		print("\n");
		addr = 0;
	} else {
		window_next = addr + size;
	}
	pci_write32(devfn, reg, (u32)addr);
	if (is64)
		pci_write32(devfn, reg + 4, 0);
	pci_write16(devfn, PCI_COMMAND, cmd);
	return addr;
}
