/*
 * exit.h: leaving the VM with a status the host test can check.
 */
#ifndef MINIMAL_EXIT_H
#define MINIMAL_EXIT_H

_Noreturn void guest_exit(int status);

#endif
