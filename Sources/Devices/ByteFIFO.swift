/// A byte FIFO of fixed capacity, its storage allocated once: the UART's receive FIFO and the
/// console's output backlog. A value, kept inside the lock of whoever owns it.
struct ByteFIFO {
    private var storage: [UInt8]
    private var head = 0
    private(set) var count = 0

    /// The storage is left unwritten: the console's 1 MiB backlog would otherwise be touched
    /// (made resident, a page fault per 4 KiB) at every start, before a byte is written.
    init(capacity: Int) { storage = [UInt8](unsafeUninitializedCapacity: capacity) { _, n in n = capacity } }

    var capacity: Int { storage.count }
    var isEmpty: Bool { count == 0 }
    var space: Int { storage.count - count }

    mutating func push(_ b: UInt8) -> Bool {
        guard count < storage.count else { return false }
        storage[(head + count) % storage.count] = b
        count += 1
        return true
    }

    mutating func pop() -> UInt8? {
        guard count > 0 else { return nil }
        let b = storage[head]
        head = (head + 1) % storage.count
        count -= 1
        return b
    }

    mutating func removeAll() { head = 0; count = 0 }

    /// Append as much of `p[0..<n]` as fits; returns how much.
    mutating func append(_ p: UnsafeRawPointer, _ n: Int) -> Int {
        let m = min(n, space)
        let capacity = storage.count
        var done = 0
        storage.withUnsafeMutableBytes { s in
            while done < m {
                let tail = (head + count) % capacity
                let run = min(m - done, capacity - tail)
                (s.baseAddress! + tail).copyMemory(from: p + done, byteCount: run)
                count += run
                done += run
            }
        }
        return m
    }

    /// Move up to `max` bytes out into `dst`; returns how many.
    mutating func take(into dst: UnsafeMutableRawPointer, max: Int) -> Int {
        let m = min(max, count)
        let capacity = storage.count
        var done = 0
        storage.withUnsafeBytes { s in
            while done < m {
                let run = min(m - done, capacity - head)
                (dst + done).copyMemory(from: s.baseAddress! + head, byteCount: run)
                head = (head + run) % capacity
                count -= run
                done += run
            }
        }
        return m
    }
}
