// FuzzSupport: what the libFuzzer targets in Fuzz/Targets share: reading a fuzzer's bytes as
// a program of typed values, invariant checks that crash loudly, and in-memory stand-ins for
// what devices talk to (interrupt wiring, a disk, a network), so no target touches /dev/kvm,
// a file or the network.

internal import CFuzzer
import Glibc
import HostSupport

/// The fuzzer's bytes, read front to back as the values a target needs. Past the end every
/// read is zero, so any input is a complete program: libFuzzer's mutations never make one
/// unreadable, only shorter.
public struct FuzzInput {
    private let bytes: UnsafeBufferPointer<UInt8>
    public private(set) var position = 0

    public init(_ data: UnsafePointer<UInt8>?, _ size: Int) {
        bytes = UnsafeBufferPointer(start: size > 0 ? data : nil, count: size > 0 ? size : 0)
    }

    public var isEmpty: Bool { position >= bytes.count }
    public var remaining: Int { max(0, bytes.count - position) }

    public mutating func byte() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }

    /// Little-endian, as the guest's own structures are.
    public mutating func integer<T: FixedWidthInteger>(_: T.Type = T.self) -> T {
        var v: T = 0
        for i in 0..<MemoryLayout<T>.size { v |= T(truncatingIfNeeded: byte()) << (8 * i) }
        return v
    }

    public mutating func bool() -> Bool { byte() & 1 != 0 }

    /// Up to `count` bytes (fewer at the end).
    public mutating func take(_ count: Int) -> [UInt8] {
        let n = min(max(0, count), remaining)
        defer { position += n }
        return Array(bytes[position ..< position + n])
    }

    /// Everything not read yet.
    public mutating func rest() -> [UInt8] { take(remaining) }

    /// One of `choices`, picked by the next byte.
    public mutating func pick<T>(_ choices: [T]) -> T { choices[Int(byte()) % choices.count] }
}

/// An invariant of the code under test. A failure prints what broke and aborts, which
/// libFuzzer reports as a crash and saves the input for.
public func fuzzCheck(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
                      file: StaticString = #fileID, line: UInt = #line) {
    guard !condition() else { return }
    Diagnostics.line("fuzz invariant broken (\(file):\(line)): \(message())")
    abort()
}

/// Hand the process to libFuzzer with `test` as the target (its LLVMFuzzerTestOneInput):
/// what each target's @main does. libFuzzer's own main cannot be used, since SwiftPM links
/// every executable with a main of the target's.
public func runLibFuzzer(_ test: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> Never {
    var argc = CommandLine.argc
    var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv, test))
}
