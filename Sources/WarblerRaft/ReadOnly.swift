/// A read-index request waiting for a quorum of heartbeat acknowledgements.
struct ReadIndexStatus {
    var request: Message
    var index: UInt64
    var acks: Set<NodeID>
}

/// The leader's queue of read-index requests (Raft thesis §6.4).
struct ReadOnly {
    let option: ReadOnlyOption
    private var pending: [[UInt8]: ReadIndexStatus] = [:]
    private var queue: [[UInt8]] = []

    init(option: ReadOnlyOption) { self.option = option }

    /// Queues a request to be answered with `index` once a quorum confirms this leader.
    mutating func addRequest(index: UInt64, _ message: Message) {
        let context = message.context
        if pending[context] != nil { return }
        pending[context] = ReadIndexStatus(request: message, index: index, acks: [])
        queue.append(context)
    }

    /// Records a heartbeat acknowledgement carrying `context`; returns who has acknowledged it.
    mutating func recvAck(from id: NodeID, context: [UInt8]) -> Set<NodeID>? {
        guard pending[context] != nil else { return nil }
        pending[context]!.acks.insert(id)
        return pending[context]!.acks
    }

    /// Dequeues every request up to and including the one with `context`: a quorum confirmed leadership at a
    /// point after all of them were received.
    mutating func advance(context: [UInt8]) -> [ReadIndexStatus] {
        guard let position = queue.firstIndex(of: context) else { return [] }
        var ready: [ReadIndexStatus] = []
        for key in queue[...position] {
            guard let status = pending.removeValue(forKey: key) else {
                preconditionFailure("raft: read-index queue and pending map disagree")
            }
            ready.append(status)
        }
        queue.removeFirst(position + 1)
        return ready
    }

    /// The context of the newest pending request, sent with heartbeats.
    var lastPendingContext: [UInt8]? { queue.last }
}
