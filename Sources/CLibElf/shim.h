// libelf and gelf (Debian: libelf-dev). `Elf *` arrives in Swift as OpaquePointer.
#include <libelf.h>
#include <gelf.h>
