/// The append messages sent to one follower and not yet acknowledged: the pipelining window.
struct Inflights: Hashable {
    /// Ring buffer of (last index of the message, bytes in it).
    private var buffer: [(index: UInt64, bytes: Int)] = []
    private var start = 0
    private(set) var count = 0
    private(set) var bytes = 0
    let capacity: Int
    let maxBytes: Int

    init(capacity: Int, maxBytes: Int) {
        self.capacity = capacity
        self.maxBytes = maxBytes
    }

    /// True when no more messages may be sent until some are acknowledged.
    var isFull: Bool { count == capacity || (maxBytes != 0 && bytes >= maxBytes) }

    mutating func add(index: UInt64, bytes size: Int) {
        precondition(!isFull, "raft: inflights overflow")
        // Allocated on first use: most followers of an idle group never need a window.
        if buffer.isEmpty { buffer = Array(repeating: (0, 0), count: capacity) }
        buffer[(start + count) % capacity] = (index, size)
        count += 1
        bytes += size
    }

    /// Releases every message whose last index is at most `index`.
    mutating func freeLE(_ index: UInt64) {
        while count > 0 {
            let slot = buffer[start]
            if slot.index > index { break }
            bytes -= slot.bytes
            start = (start + 1) % capacity
            count -= 1
        }
        if count == 0 { start = 0 }
    }

    mutating func reset() {
        start = 0
        count = 0
        bytes = 0
    }

    static func == (lhs: Inflights, rhs: Inflights) -> Bool {
        lhs.count == rhs.count && lhs.bytes == rhs.bytes && lhs.capacity == rhs.capacity
    }

    func hash(into hasher: inout Hasher) {
        hasher.combine(count)
        hasher.combine(bytes)
    }
}
