// Backends: where devices' data lives, apart from the device models that speak virtio. A
// block device's sectors (an image file), a network device's frames (a host tap). Each is a
// protocol, so a test puts in a backend that fails the way real ones fail, and a backend in
// another process (vhost-user) can take the same place.

import Glibc

/// A failed block operation: the errno the host gave (EIO, ENOSPC, ...).
public struct BlockIOError: Error, Equatable, Sendable, CustomStringConvertible {
    public let errno: Int32
    public init(errno: Int32) { self.errno = errno }
    public var description: String { String(cString: strerror(errno)) }
}

/// Where a virtio-blk device's sectors live. The device model decodes requests and checks
/// them against `size`; the backend only moves bytes, so a test can put a backend in that
/// fails the way disks fail (EIO, ENOSPC, a flush that does not make it), and a later
/// backend (another process, a network disk) fits the same seam.
///
/// Called on the device's thread only, one request at a time. Class-bound: a call is one
/// witness-table jump, no box, no allocation.
public protocol BlockBackend: AnyObject, Sendable {
    /// What it is, for messages (the image's path).
    var path: String { get }
    /// Its size in bytes.
    var size: UInt64 { get }
    var isReadOnly: Bool { get }
    /// Whether `discard` works (punching holes in the file).
    var canDiscard: Bool { get }

    /// Fill `count` bytes at `buffer` from byte `offset`. Bytes past the end read as zeroes.
    func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws(BlockIOError)
    /// Write `count` bytes from `buffer` at byte `offset`: all of them, or an error.
    func write(from buffer: UnsafeRawPointer, count: Int, at offset: UInt64) throws(BlockIOError)
    /// Make every completed write durable (fdatasync for a file).
    func flush() throws(BlockIOError)
    /// Forget `count` bytes at `offset`: they read back as zeroes afterwards.
    func discard(at offset: UInt64, count: UInt64) throws(BlockIOError)
}
