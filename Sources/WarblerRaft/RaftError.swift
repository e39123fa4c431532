/// An error raised by the Raft core or its storage.
///
/// The ``code`` is stable and is what higher layers put on the wire; the message is for people.
public struct RaftError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A stable identifier for a kind of failure.
    public struct Code: Sendable, Hashable, RawRepresentable, CustomStringConvertible {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// The proposal was not appended: this node is not the leader, leadership is being transferred, or the
        /// node was removed. ``RaftError/leaderHint`` names the leader when one is known.
        public static let proposalDropped = Code(rawValue: "raft.proposal_dropped")
        /// The uncommitted tail of the log is at ``Config/maxUncommittedEntriesSize``; retry later.
        public static let uncommittedLogFull = Code(rawValue: "raft.uncommitted_log_full")
        /// A membership change is already in flight; only one may be pending at a time.
        public static let confChangePending = Code(rawValue: "raft.conf_change_pending")
        /// The membership change is not allowed (it would leave no voter, or names an unknown node).
        public static let invalidConfChange = Code(rawValue: "raft.invalid_conf_change")
        /// The requested log position was compacted away.
        public static let compacted = Code(rawValue: "raft.compacted")
        /// The requested log position does not exist yet.
        public static let unavailable = Code(rawValue: "raft.unavailable")
        /// The snapshot being applied is older than the one held.
        public static let snapshotOutOfDate = Code(rawValue: "raft.snapshot_out_of_date")
        /// The storage cannot produce a snapshot right now; Raft will retry.
        public static let snapshotTemporarilyUnavailable = Code(rawValue: "raft.snapshot_temporarily_unavailable")
        /// A ``Config`` field is invalid.
        public static let invalidConfig = Code(rawValue: "raft.invalid_config")
        /// A leader transfer cannot start (no such voter, or the target is a learner).
        public static let invalidTransfer = Code(rawValue: "raft.invalid_transfer")
        /// Stored data could not be decoded.
        public static let corrupt = Code(rawValue: "raft.corrupt")
    }

    /// What went wrong, stably.
    public var code: Code
    /// What went wrong, for a person.
    public var message: String
    /// The leader this node knows of, when the error is a redirect.
    public var leaderHint: NodeID?
    /// The source location that raised the error.
    public var location: String

    /// Creates an error.
    public init(
        _ code: Code,
        _ message: String,
        leaderHint: NodeID? = nil,
        file: StaticString = #fileID,
        line: UInt = #line
    ) {
        self.code = code
        self.message = message
        self.leaderHint = leaderHint
        self.location = "\(file):\(line)"
    }

    public var description: String {
        var text = "\(code): \(message)"
        if let leaderHint, leaderHint != noneNode { text += " (leader: \(leaderHint))" }
        return text
    }
}
