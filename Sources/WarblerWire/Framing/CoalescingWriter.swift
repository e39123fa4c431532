import NIOCore

/// Writes to one channel from any thread, with one flush per burst.
///
/// A write goes to the channel without a flush, and one flush is scheduled on the channel's event loop for
/// everything written before it runs: frames written together (a round's acks and pushes on a node, a window
/// of sends in a client) leave in one `writev` instead of one syscall each. Both the write and the flush
/// bookkeeping happen on the event loop, in the order the writes were made, so a write can never slip in after
/// the last scheduled flush and wait forever.
public final class CoalescingWriter: @unchecked Sendable {
    /// The channel written to.
    public let channel: any Channel
    /// Touched only on the channel's event loop.
    private var flushPending = false

    /// Writes to `channel`.
    public init(channel: any Channel) { self.channel = channel }

    /// Writes `data` (an outbound message of the channel's pipeline) and makes sure a flush follows.
    public func write(_ data: some Sendable) { onLoop { self.writeOnLoop(data) } }

    /// Writes every item of `data` in order, in one event-loop task, and makes sure a flush follows.
    public func write<Item: Sendable>(contentsOf data: [Item]) {
        onLoop { for item in data { self.writeOnLoop(item) } }
    }

    /// Runs `body` on the channel's event loop: at once when called there.
    private func onLoop(_ body: @escaping @Sendable () -> Void) {
        let loop = channel.eventLoop
        if loop.inEventLoop { body() } else { loop.execute(body) }
    }

    private func writeOnLoop(_ data: some Sendable) {
        channel.write(data, promise: nil)
        guard !flushPending else { return }
        flushPending = true
        // Runs after every write queued so far; a write queued after it finds the flag clear and schedules anew.
        channel.eventLoop.execute {
            self.flushPending = false
            self.channel.flush()
        }
    }
}
