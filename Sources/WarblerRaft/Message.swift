/// The kinds of message Raft nodes exchange, plus the local ones a node steps into itself.
public enum MessageType: UInt8, Sendable, Hashable, CaseIterable {
    /// Local: start an election.
    case hup
    /// Local: leader should broadcast heartbeats.
    case beat
    /// A proposal of new entries.
    case prop
    /// Append entries (log replication).
    case app
    /// Reply to ``app`` (accept or reject with a hint).
    case appResp
    case vote
    case voteResp
    case preVote
    case preVoteResp
    /// Install a snapshot.
    case snap
    case heartbeat
    case heartbeatResp
    /// Local: the transport reports a follower unreachable.
    case unreachable
    /// Local: the transport reports whether a snapshot reached a follower.
    case snapStatus
    /// Local: leader checks that it has heard from a quorum.
    case checkQuorum
    /// Ask the leader to hand leadership to the sender.
    case transferLeader
    /// Tell a follower to campaign at once (leader transfer).
    case timeoutNow
    case readIndex
    case readIndexResp

    /// The name used in logs and golden files (etcd's spelling).
    public var name: String {
        switch self {
        case .hup: "MsgHup"
        case .beat: "MsgBeat"
        case .prop: "MsgProp"
        case .app: "MsgApp"
        case .appResp: "MsgAppResp"
        case .vote: "MsgVote"
        case .voteResp: "MsgVoteResp"
        case .preVote: "MsgPreVote"
        case .preVoteResp: "MsgPreVoteResp"
        case .snap: "MsgSnap"
        case .heartbeat: "MsgHeartbeat"
        case .heartbeatResp: "MsgHeartbeatResp"
        case .unreachable: "MsgUnreachable"
        case .snapStatus: "MsgSnapStatus"
        case .checkQuorum: "MsgCheckQuorum"
        case .transferLeader: "MsgTransferLeader"
        case .timeoutNow: "MsgTimeoutNow"
        case .readIndex: "MsgReadIndex"
        case .readIndexResp: "MsgReadIndexResp"
        }
    }

    /// True for the messages that only ever travel from a node to itself.
    public var isLocal: Bool {
        switch self {
        case .hup, .beat, .unreachable, .snapStatus, .checkQuorum: true
        default: false
        }
    }

    /// True for responses (a node never answers a response).
    public var isResponse: Bool {
        switch self {
        case .appResp, .voteResp, .preVoteResp, .heartbeatResp, .readIndexResp: true
        default: false
        }
    }

    var voteResponse: MessageType {
        switch self {
        case .vote: .voteResp
        case .preVote: .preVoteResp
        default: preconditionFailure("raft: \(name) is not a vote request")
        }
    }
}

/// One message between the members of a group.
///
/// Not every field is meaningful for every type; unused ones stay zero.
public struct Message: Sendable, Hashable {
    public var type: MessageType
    public var to: NodeID
    public var from: NodeID
    public var term: UInt64
    /// The term of the entry at `index` (for ``MessageType/app``, the entry before `entries`).
    public var logTerm: UInt64
    public var index: UInt64
    public var entries: [Entry]
    public var commit: UInt64
    public var snapshot: Snapshot?
    public var reject: Bool
    /// On a rejected append: the follower's hint of where the leader should probe next.
    public var rejectHint: UInt64
    /// Opaque context: the campaign kind on votes, the request context on read-index traffic.
    public var context: [UInt8]

    /// Creates a message.
    public init(
        type: MessageType,
        to: NodeID = noneNode,
        from: NodeID = noneNode,
        term: UInt64 = 0,
        logTerm: UInt64 = 0,
        index: UInt64 = 0,
        entries: [Entry] = [],
        commit: UInt64 = 0,
        snapshot: Snapshot? = nil,
        reject: Bool = false,
        rejectHint: UInt64 = 0,
        context: [UInt8] = []
    ) {
        self.type = type
        self.to = to
        self.from = from
        self.term = term
        self.logTerm = logTerm
        self.index = index
        self.entries = entries
        self.commit = commit
        self.snapshot = snapshot
        self.reject = reject
        self.rejectHint = rejectHint
        self.context = context
    }
}
