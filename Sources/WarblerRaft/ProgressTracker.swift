/// The outcome of counting votes.
enum VoteResult {
    case pending, won, lost
}

/// The membership and, on the leader, the progress of every member.
struct ProgressTracker {
    private(set) var voters: Set<NodeID> = []
    private(set) var learners: Set<NodeID> = []
    /// Every member in ascending order, so that iteration is deterministic.
    private(set) var ids: [NodeID] = []
    var progress: [NodeID: Progress] = [:]
    var votes: [NodeID: Bool] = [:]
    let maxInflight: Int
    let maxInflightBytes: Int

    init(maxInflight: Int, maxInflightBytes: Int) {
        self.maxInflight = maxInflight
        self.maxInflightBytes = maxInflightBytes
    }

    var confState: ConfState { ConfState(voters: voters, learners: learners) }
    var quorum: Int { voters.count / 2 + 1 }
    var isSingleton: Bool { voters.count == 1 }

    /// Adds or moves a member, keeping its progress if it already had one.
    mutating func set(_ id: NodeID, learner: Bool, next: UInt64) {
        if learner {
            voters.remove(id)
            learners.insert(id)
        } else {
            learners.remove(id)
            voters.insert(id)
        }
        if progress[id] == nil {
            var created = Progress(
                next: next,
                isLearner: learner,
                maxInflight: maxInflight,
                maxInflightBytes: maxInflightBytes
            )
            // A new member counts as active so that check-quorum does not depose the leader that added it.
            created.recentActive = true
            progress[id] = created
        } else {
            progress[id]!.isLearner = learner
        }
        ids = progress.keys.sorted()
    }

    mutating func remove(_ id: NodeID) {
        voters.remove(id)
        learners.remove(id)
        progress[id] = nil
        votes[id] = nil
        ids = progress.keys.sorted()
    }

    func isMember(_ id: NodeID) -> Bool { voters.contains(id) || learners.contains(id) }

    /// The largest index replicated on a quorum of voters.
    func committed() -> UInt64 {
        if voters.isEmpty { return UInt64.max }
        if voters.count == 1, let only = voters.first { return progress[only]?.match ?? 0 }
        var matches: [UInt64] = []
        matches.reserveCapacity(voters.count)
        for id in voters { matches.append(progress[id]?.match ?? 0) }
        matches.sort(by: >)
        return matches[quorum - 1]
    }

    mutating func resetVotes() { votes = [:] }

    mutating func recordVote(_ id: NodeID, granted: Bool) {
        if votes[id] == nil { votes[id] = granted }
    }

    func tallyVotes() -> (granted: Int, rejected: Int, result: VoteResult) {
        var granted = 0
        var rejected = 0
        for id in voters {
            switch votes[id] {
            case true?: granted += 1
            case false?: rejected += 1
            case nil: break
            }
        }
        let missing = voters.count - granted - rejected
        if granted >= quorum { return (granted, rejected, .won) }
        if granted + missing < quorum { return (granted, rejected, .lost) }
        return (granted, rejected, .pending)
    }

    /// True when a quorum of voters, counting `selfID`, was recently active.
    func quorumActive(selfID: NodeID) -> Bool {
        var active = 0
        for id in voters where id == selfID || progress[id]?.recentActive == true { active += 1 }
        return active >= quorum
    }

    /// Whether a set of acknowledgements forms a quorum of voters.
    func hasQuorum(_ acks: Set<NodeID>) -> Bool {
        var count = 0
        for id in voters where acks.contains(id) { count += 1 }
        return count >= quorum
    }
}
