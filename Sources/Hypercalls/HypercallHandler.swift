internal import CHost
import Devices
import Glibc
import HostSupport
import Memory
import RunControl

/// The registers a hypercall reads, in calling-convention order.
public struct HypercallArguments: Sendable {
    public var a0: UInt64, a1: UInt64, a2: UInt64, a3: UInt64, a4: UInt64
    public init(_ a0: UInt64 = 0, _ a1: UInt64 = 0, _ a2: UInt64 = 0, _ a3: UInt64 = 0, _ a4: UInt64 = 0) {
        (self.a0, self.a1, self.a2, self.a3, self.a4) = (a0, a1, a2, a3, a4)
    }
}

/// Runs hypercalls on behalf of a vCPU. One instance serves all vCPUs: the handlers keep no
/// state of their own (what they touch — console, memory, the stop controller — is safe to
/// share).
public final class HypercallHandler: Sendable {
    /// The longest buffer console_write or random accept; larger is EINVAL.
    public static let maxBufferLength: UInt64 = 1 << 20

    let memory: GuestMemory
    let console: Console
    let stop: StopController

    public init(memory: GuestMemory, console: Console, stop: StopController) {
        self.memory = memory
        self.console = console
        self.stop = stop
    }

    /// What the vCPU does after a hypercall.
    public enum Result: Equatable {
        /// Put this value in rax and resume the guest.
        case resume(UInt64)
        /// The call ended the VM (exit): do not re-enter the guest.
        case stopVCPU
    }

    /// The one place numbers meet handlers.
    @inline(__always)
    public func dispatch(number: UInt64, _ args: HypercallArguments) -> Result {
        guard number <= UInt64(UInt32.max), let call = Hypercall(rawValue: UInt32(number)) else {
            return .resume(UInt64(bitPattern: HypercallError.noSuchCall))
        }
        switch call {
        case .noop: return .resume(0)
        case .consoleWrite: return .resume(UInt64(bitPattern: consoleWrite(buffer: args.a0, length: args.a1)))
        case .exit: return exit(status: args.a0)
        case .timeNs: return .resume(timeNs())
        case .random: return .resume(UInt64(bitPattern: random(buffer: args.a0, length: args.a1)))
        case .version: return .resume(UInt64(bitPattern: version(buffer: args.a0, length: args.a1)))
        case .checksum: return .resume(UInt64(bitPattern: checksum(buffer: args.a0, length: args.a1)))
        }
    }

    // MARK: Handlers

    func consoleWrite(buffer: UInt64, length: UInt64) -> Int64 {
        guard length <= Self.maxBufferLength else { return HypercallError.invalid }
        guard let p = memory.pointer(buffer, count: length) else { return HypercallError.fault }
        console.write(UnsafeRawBufferPointer(start: p, count: Int(length)))
        return Int64(length)
    }

    func exit(status: UInt64) -> Result {
        stop.stop(.guestExit(status: UInt8(truncatingIfNeeded: status)))
        return .stopVCPU
    }

    func timeNs() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    func random(buffer: UInt64, length: UInt64) -> Int64 {
        guard length <= Self.maxBufferLength else { return HypercallError.invalid }
        guard let p = memory.writablePointer(buffer, count: length) else { return HypercallError.fault }
        var filled = 0
        while filled < Int(length) {
            let n = sys_getrandom(p + filled, UInt(Int(length) - filled))
            if n < 0 {
                if errno == EINTR { continue }
                return -Int64(errno)
            }
            filled += Int(n)
        }
        return Int64(length)
    }

    func version(buffer: UInt64, length: UInt64) -> Int64 {
        if buffer != 0 && length > 0 {
            guard length <= Self.maxBufferLength else { return HypercallError.invalid }
            guard let p = memory.writablePointer(buffer, count: length) else { return HypercallError.fault }
            let text = Array("swiftvmm \(SwiftVMMVersion.string)".utf8)
            let n = min(text.count, Int(length) - 1)
            text.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: n) }
            p.storeBytes(of: 0, toByteOffset: n, as: UInt8.self)
        }
        return Int64(SwiftVMMVersion.hypercallABI)
    }

    /// 32-bit FNV-1a (offset basis 2166136261, prime 16777619) of a guest buffer.
    func checksum(buffer: UInt64, length: UInt64) -> Int64 {
        guard length <= Self.maxBufferLength else { return HypercallError.invalid }
        guard let p = memory.pointer(buffer, count: length) else { return HypercallError.fault }
        var hash: UInt32 = 2_166_136_261
        for byte in UnsafeRawBufferPointer(start: p, count: Int(length)) {
            hash = (hash ^ UInt32(byte)) &* 16_777_619
        }
        return Int64(hash)
    }

    /// "console_write(0x100200, 12)" for traces.
    public static func describe(number: UInt64, _ args: HypercallArguments) -> String {
        guard number <= UInt64(UInt32.max), let call = Hypercall(rawValue: UInt32(number)) else {
            return "#\(number)(unknown)"
        }
        let values = [args.a0, args.a1, args.a2, args.a3, args.a4].prefix(call.argumentCount)
        return "\(call.name)(\(values.map { Diagnostics.hex($0) }.joined(separator: ", ")))"
    }
}
