/*
 * smp.h: start the second vCPU (swiftvmm --cpus 2) and run a function on it.
 */
#ifndef MINIMAL_SMP_H
#define MINIMAL_SMP_H

#include "lib.h"

/*
 * INIT and SIPI to the vCPU with local APIC ID 1, which then calls fn() on
 * its own stack and halts when fn returns.  False if it did not report in
 * within about a second (no second vCPU: run with --cpus 2).
 */
bool smp_start_ap(void (*fn)(void));

#endif
