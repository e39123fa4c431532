/// The leader's view of one follower's log.
public struct Progress: Hashable, Sendable {
    /// How the leader is currently sending to the follower.
    public enum State: String, Sendable, Hashable {
        /// One append at a time until the match point is found.
        case probe = "StateProbe"
        /// Appends are pipelined optimistically, up to the inflight window.
        case replicate = "StateReplicate"
        /// A snapshot is on its way; appends wait.
        case snapshot = "StateSnapshot"
    }

    /// The highest index known to be replicated on the follower.
    public var match: UInt64 = 0
    /// The next index to send.
    public var next: UInt64
    public var state: State = .probe
    /// While in ``State/snapshot``, the index of the snapshot being sent.
    public var pendingSnapshot: UInt64 = 0
    /// The follower has been heard from since the last check-quorum round.
    public var recentActive = false
    /// In probe state: an append was sent and not answered yet.
    var flowPaused = false
    var inflights: Inflights
    public var isLearner: Bool

    init(next: UInt64, isLearner: Bool, maxInflight: Int, maxInflightBytes: Int) {
        self.next = next
        self.isLearner = isLearner
        self.inflights = Inflights(capacity: maxInflight, maxBytes: maxInflightBytes)
    }

    /// The number of unacknowledged append messages.
    public var inflightCount: Int { inflights.count }

    private mutating func reset(to state: State) {
        flowPaused = false
        pendingSnapshot = 0
        self.state = state
        inflights.reset()
    }

    mutating func becomeProbe() {
        if state == .snapshot {
            let pending = pendingSnapshot
            reset(to: .probe)
            next = max(match + 1, pending + 1)
        } else {
            reset(to: .probe)
            next = match + 1
        }
    }

    mutating func becomeReplicate() {
        reset(to: .replicate)
        next = match + 1
    }

    mutating func becomeSnapshot(index: UInt64) {
        reset(to: .snapshot)
        pendingSnapshot = index
    }

    /// Records that an append carrying `entries` entries and `bytes` bytes was sent.
    mutating func sentEntries(_ entries: Int, bytes: Int) {
        switch state {
        case .replicate:
            if entries > 0 {
                next += UInt64(entries)
                inflights.add(index: next - 1, bytes: bytes)
            }
        case .probe:
            flowPaused = true
        case .snapshot:
            preconditionFailure("raft: sending entries to a follower in \(state.rawValue)")
        }
    }

    /// Records an acknowledgement up to `index`; returns true when the match point advanced.
    mutating func maybeUpdate(_ index: UInt64) -> Bool {
        var updated = false
        if match < index {
            match = index
            updated = true
            flowPaused = false
        }
        next = max(next, index + 1)
        return updated
    }

    /// Handles a rejection of the append after `rejected`; `matchHint` is where the follower suggests probing.
    /// Returns false for a stale rejection.
    mutating func maybeDecrease(rejected: UInt64, matchHint: UInt64) -> Bool {
        if state == .replicate {
            // A rejection below the match point is stale.
            if rejected <= match { return false }
            next = match + 1
            return true
        }
        // In probe state only the rejection of the last probe counts.
        if next - 1 != rejected { return false }
        next = max(min(rejected, matchHint + 1), match + 1)
        flowPaused = false
        return true
    }

    /// True when the leader must not send appends to this follower now.
    var isPaused: Bool {
        switch state {
        case .probe: flowPaused
        case .replicate: inflights.isFull
        case .snapshot: true
        }
    }
}
