/// A node's identity inside one Raft group. `0` means "none".
public typealias NodeID = UInt64

/// The distinguished "no node" identity (no leader, no vote).
public let noneNode: NodeID = 0

/// The kind of a log entry.
public enum EntryKind: UInt8, Sendable, Hashable {
    /// Application data (possibly empty: a new leader's no-op).
    case normal = 0
    /// An encoded ``ConfChange``.
    case confChange = 1
}

/// One entry of the replicated log.
public struct Entry: Sendable, Hashable {
    /// The term in which a leader created the entry.
    public var term: UInt64
    /// The entry's position in the log, from 1.
    public var index: UInt64
    /// Whether `data` is application data or a membership change.
    public var kind: EntryKind
    /// The payload, opaque to Raft.
    public var data: [UInt8]

    /// Creates an entry.
    public init(term: UInt64 = 0, index: UInt64 = 0, kind: EntryKind = .normal, data: [UInt8] = []) {
        self.term = term
        self.index = index
        self.kind = kind
        self.data = data
    }

    /// The size that counts against message and uncommitted-log limits.
    @inlinable public var payloadSize: Int { data.count }
}

/// The state that MUST be persisted before any message of the same ``Ready`` is sent.
public struct HardState: Sendable, Hashable {
    /// The latest term this node has seen.
    public var term: UInt64
    /// The candidate this node voted for in `term`, or ``noneNode``.
    public var vote: NodeID
    /// The highest log index known to be committed.
    public var commit: UInt64

    /// Creates a hard state.
    public init(term: UInt64 = 0, vote: NodeID = noneNode, commit: UInt64 = 0) {
        self.term = term
        self.vote = vote
        self.commit = commit
    }

    /// True for the zero value, which is never persisted.
    public var isEmpty: Bool { term == 0 && vote == noneNode && commit == 0 }
}

/// The membership of a group: who votes and who only replicates.
public struct ConfState: Sendable, Hashable {
    /// The voting members.
    public var voters: Set<NodeID>
    /// Members that receive the log but do not vote and are not counted for commit.
    public var learners: Set<NodeID>

    /// Creates a configuration.
    public init(voters: Set<NodeID> = [], learners: Set<NodeID> = []) {
        self.voters = voters
        self.learners = learners
    }
}

/// Where a snapshot sits in the log and the membership at that point.
public struct SnapshotMetadata: Sendable, Hashable {
    /// The index of the last entry the snapshot covers.
    public var index: UInt64
    /// The term of that entry.
    public var term: UInt64
    /// The membership in force at `index`.
    public var confState: ConfState

    /// Creates snapshot metadata.
    public init(index: UInt64 = 0, term: UInt64 = 0, confState: ConfState = ConfState()) {
        self.index = index
        self.term = term
        self.confState = confState
    }
}

/// A point-in-time image of the application state plus the metadata Raft needs.
public struct Snapshot: Sendable, Hashable {
    /// The application's serialized state machine, opaque to Raft.
    public var data: [UInt8]
    /// Where the snapshot sits in the log.
    public var metadata: SnapshotMetadata

    /// Creates a snapshot.
    public init(data: [UInt8] = [], metadata: SnapshotMetadata = SnapshotMetadata()) {
        self.data = data
        self.metadata = metadata
    }

    /// True when the snapshot covers nothing (index 0).
    public var isEmpty: Bool { metadata.index == 0 }
}

/// The role a node currently plays in its group.
public enum StateRole: String, Sendable, Hashable {
    case follower = "StateFollower"
    case preCandidate = "StatePreCandidate"
    case candidate = "StateCandidate"
    case leader = "StateLeader"
}

/// Volatile state that is useful to observe but never persisted.
public struct SoftState: Sendable, Hashable {
    /// The leader this node knows of, or ``noneNode``.
    public var lead: NodeID
    /// This node's role.
    public var role: StateRole
}

/// The answer to a ``RawNode/readIndex(context:)`` request: reads issued with `context` are linearizable once the
/// application has applied up to `index`.
public struct ReadState: Sendable, Hashable {
    /// The commit index at the time the read was confirmed by a quorum.
    public var index: UInt64
    /// The caller's request context, returned unchanged.
    public var requestContext: [UInt8]
}
