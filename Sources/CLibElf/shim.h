// elfutils: libelf and gelf for reading kernel images, libdw for their DWARF line tables
// (Debian: libelf-dev, libdw-dev). `Elf *` and `Dwarf *` arrive in Swift as OpaquePointer.
#include <libelf.h>
#include <gelf.h>
#include <elfutils/libdw.h>
