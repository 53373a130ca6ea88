import Glibc

/// Trace and diagnostic lines go to stderr, whole lines at a time (one write each) so
/// lines from different vCPU threads do not interleave mid-line.
public enum Diagnostics {
    public static func line(_ text: String) {
        var s = text
        s.append("\n")
        s.withUTF8 { buf in
            var off = 0
            while off < buf.count {
                let n = Glibc.write(2, buf.baseAddress! + off, buf.count - off)
                if n <= 0 { if n < 0 && errno == EINTR { continue }; return }
                off += n
            }
        }
    }

    public static func hex<T: BinaryInteger>(_ v: T, width: Int = 0) -> String {
        let s = String(v, radix: 16)
        return "0x" + (s.count < width ? String(repeating: "0", count: width - s.count) + s : s)
    }
}
