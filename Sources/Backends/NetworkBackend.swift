import Glibc

/// Where a virtio-net device's frames come from and go to. Frames cross with the 12-byte
/// virtio_net_hdr_v1 in front, as the device and a tap with a vnet header both lay them out.
///
/// Called on the device's thread only. Class-bound: a call is one witness-table jump.
public protocol NetworkBackend: AnyObject, Sendable {
    /// What it is, for messages and reports (the tap's name).
    var name: String { get }
    /// Readable when a frame is waiting (the device polls it only while the guest has
    /// posted buffers to put one in).
    var receiveFD: Int32 { get }
    /// Take one waiting frame (header included) into `buffer`: its length, or 0 if none is
    /// waiting. A frame longer than `capacity` is cut, as the tap would.
    func receive(into buffer: UnsafeMutableRawPointer, capacity: Int) -> Int
    /// Send one frame (header included) gathered from `pieces`. False if it was dropped (the
    /// host side is full or down: as on a wire, the sender is not told).
    func send(_ pieces: UnsafeBufferPointer<iovec>) -> Bool
}
