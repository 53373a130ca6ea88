import CLibElf
import Glibc
import HostSupport

/// Source file and line for a code address, from a kernel's DWARF line tables (libdw):
/// what `addr2line -e vmlinux` and `gdb`'s `list *(func+0x77)` do by hand.
/// Unchecked Sendable: a libdw handle, used from one thread at the end of a run.
public final class SourceLines: @unchecked Sendable {
    private let fd: Int32
    private let dwarf: OpaquePointer

    /// nil if the file cannot be opened or has no DWARF.
    public init?(path: String) {
        guard case .success(let file) = openInputFile(path) else { return nil }
        let fd = file.fd
        elf_version(UInt32(EV_CURRENT))
        guard let d = dwarf_begin(fd, DWARF_C_READ) else {
            close(fd)
            return nil
        }
        self.fd = fd
        self.dwarf = d
    }

    deinit {
        dwarf_end(dwarf)
        close(fd)
    }

    public struct Location: Sendable, Equatable, CustomStringConvertible {
        public let file: String
        public let line: Int
        public var description: String { "\(file):\(line)" }
    }

    public func location(of address: UInt64) -> Location? {
        var cu = Dwarf_Die()
        guard dwarf_addrdie(dwarf, address, &cu) != nil,
              let line = dwarf_getsrc_die(&cu, address) else { return nil }
        var number: Int32 = 0
        guard dwarf_lineno(line, &number) == 0, let file = dwarf_linesrc(line, nil, nil) else { return nil }
        return Location(file: String(cString: file), line: Int(number))
    }
}
