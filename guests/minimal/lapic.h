/*
 * lapic.h: the two things the guest asks of the local APIC.
 */
#ifndef MINIMAL_LAPIC_H
#define MINIMAL_LAPIC_H

#include "lib.h"

/* Let the 8259 PIC's interrupts through (LINT0 as ExtINT); pic_setup() calls it. */
void lapic_virtual_wire(void);
/* End of interrupt for a vector the local APIC delivered (MSI-X). */
void lapic_eoi(void);

#endif
