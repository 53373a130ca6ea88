import HostSupport
import KernelLoading

/// Turns guest code addresses into `symbol+0xoffset/0xsize`, from a kernel ELF's symbol table
/// or a `System.map`, and back (name to address), for crash reports and oops decoding.
public struct Symbolizer: Sendable {
    public struct Symbol: Sendable, Equatable {
        public let name: String
        public let address: UInt64
        public let size: UInt64
    }

    /// Code symbols sorted by address.
    public let symbols: [Symbol]
    private let byName: [String: Int]

    public init(symbols: [Symbol]) {
        var sorted = symbols.filter { !$0.name.isEmpty }.sorted { $0.address < $1.address }
        // A System.map has no sizes: a symbol runs to the next one.
        for i in sorted.indices where sorted[i].size == 0 && i + 1 < sorted.count {
            sorted[i] = Symbol(name: sorted[i].name, address: sorted[i].address,
                               size: sorted[i + 1].address - sorted[i].address)
        }
        self.symbols = sorted
        var names: [String: Int] = [:]
        for (i, s) in sorted.enumerated() where names[s.name] == nil { names[s.name] = i }
        byName = names
    }

    /// The function symbols of an ELF image (empty if it has no symbol table).
    public init(elf bytes: [UInt8]) {
        self.init(symbols: ELFImage.symbols(bytes).filter(\.isFunction).map {
            Symbol(name: $0.name, address: $0.value, size: $0.size)
        })
    }

    /// `ffffffff81000000 T _text` lines; text symbols only.
    public init(systemMap text: String) {
        var result: [Symbol] = []
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ")
            guard parts.count >= 3, let addr = UInt64(parts[0], radix: 16),
                  ["T", "t", "W", "w"].contains(parts[1]) else { continue }
            result.append(Symbol(name: String(parts[2]), address: addr, size: 0))
        }
        self.init(symbols: result)
    }

    public var isEmpty: Bool { symbols.isEmpty }

    /// The symbol containing `address`, and the offset into it.
    public func lookup(_ address: UInt64) -> (symbol: Symbol, offset: UInt64)? {
        var lo = 0, hi = symbols.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if symbols[mid].address <= address { lo = mid + 1 } else { hi = mid }
        }
        guard lo > 0 else { return nil }
        let s = symbols[lo - 1]
        let offset = address - s.address
        guard offset < max(s.size, 1) else { return nil }
        return (s, offset)
    }

    public func address(of name: String) -> Symbol? {
        byName[name].map { symbols[$0] }
    }

    /// `name+0x1c/0x60` in Linux's notation, or the bare address when no symbol covers it.
    public func describe(_ address: UInt64) -> String {
        guard let (s, off) = lookup(address) else { return Diagnostics.hex(address) }
        return "\(s.name)+0x\(String(off, radix: 16))/0x\(String(s.size, radix: 16))"
    }
}
