/*
 * pci.h: just enough PCI to find virtio devices on bus 0.
 */
#ifndef MINIMAL_PCI_H
#define MINIMAL_PCI_H

#include "lib.h"

/* Configuration space registers we touch. */
#define PCI_VENDOR_ID		0x00
#define PCI_DEVICE_ID		0x02
#define PCI_COMMAND		0x04
#define PCI_STATUS		0x06
#define PCI_HEADER_TYPE		0x0e
#define PCI_BAR0		0x10
#define PCI_SUBSYSTEM_ID	0x2e
#define PCI_CAP_PTR		0x34
#define PCI_INTERRUPT_LINE	0x3c

#define PCI_CMD_MEMORY		0x0002
#define PCI_CMD_MASTER		0x0004
#define PCI_CMD_INTX_DISABLE	0x0400
#define PCI_STATUS_CAP_LIST	0x0010

#define PCI_CAP_MSIX		0x11
#define PCI_CAP_VENDOR		0x09

/* One function on bus 0: devfn = device << 3 | function. */
struct pci_dev {
	u8 devfn;
	u16 vendor, device, subsystem;
};

u32 pci_read32(u8 devfn, u8 reg);
u16 pci_read16(u8 devfn, u8 reg);
u8 pci_read8(u8 devfn, u8 reg);
void pci_write32(u8 devfn, u8 reg, u32 v);
void pci_write16(u8 devfn, u8 reg, u16 v);

/* The functions found on bus 0 (scanned once, on first use). */
int pci_devices(const struct pci_dev **list);

/*
 * The address of memory BAR 'bar' (0-5), assigning one below 4 GiB if the
 * firmware left it unassigned or put it where we cannot reach it.  0 if it
 * is not a memory BAR.
 */
u64 pci_bar_address(u8 devfn, int bar);

#endif
