/// How reads through ``RawNode/readIndex(context:)`` are confirmed.
public enum ReadOnlyOption: Sendable, Hashable {
    /// The leader confirms it is still leader with a heartbeat round to a quorum (ReadIndex, Raft thesis §6.4).
    case safe
    /// The leader relies on its lease (it heard from a quorum within an election timeout). Faster, but it
    /// assumes bounded clock drift between nodes; requires ``Config/checkQuorum``. Off by default.
    case leaseBased
}

/// The settings of one Raft node. All durations are in ticks: the shell decides how long a tick is.
public struct Config: Sendable, Hashable {
    /// This node's identity; MUST be non-zero and unique in the group.
    public var id: NodeID
    /// Ticks without hearing from a leader before a follower campaigns. The actual timeout is drawn from
    /// `[electionTick, 2 * electionTick)` using ``randomSeed``. MUST be greater than ``heartbeatTick``.
    public var electionTick: Int = 10
    /// Ticks between leader heartbeats.
    public var heartbeatTick: Int = 1
    /// The last applied index, when restarting a node whose state machine survived. 0 otherwise.
    public var applied: UInt64 = 0
    /// Maximum bytes of entries in one append message (at least one entry is always sent). 0 = one entry.
    public var maxSizePerMsg: Int = 1 << 20
    /// Maximum bytes of committed entries handed to the application in one ``Ready``. 0 = unlimited.
    public var maxCommittedSizePerReady: Int = 0
    /// Maximum bytes of entries appended by this leader and not yet committed; proposals beyond it are
    /// rejected with ``RaftError/Code/uncommittedLogFull``. 0 = unlimited.
    public var maxUncommittedEntriesSize: Int = 0
    /// Maximum append messages in flight to one follower (pipelining window). MUST be positive.
    public var maxInflightMsgs: Int = 256
    /// Maximum bytes of entries in flight to one follower. 0 = unlimited.
    public var maxInflightBytes: Int = 0
    /// A leader that has not heard from a quorum within an election timeout steps down.
    public var checkQuorum: Bool = true
    /// Candidates first run a pre-vote that does not bump terms, so a partitioned node that rejoins does not
    /// disrupt a healthy leader.
    public var preVote: Bool = true
    /// How read-index requests are confirmed.
    public var readOnlyOption: ReadOnlyOption = .safe
    /// Seed of the generator that draws randomized election timeouts. Different nodes SHOULD use different
    /// seeds; the same seed replays the same timeouts.
    public var randomSeed: UInt64 = 0

    /// Creates a configuration for node `id` with defaults for everything else.
    public init(id: NodeID) {
        self.id = id
        self.randomSeed = id &* 0x9E37_79B9_7F4A_7C15
    }

    /// Checks every field; throws an error naming the first one that is wrong and why.
    public func validate() throws(RaftError) {
        if id == noneNode { throw RaftError(.invalidConfig, "id must not be 0 (0 means no node)") }
        if heartbeatTick <= 0 {
            throw RaftError(.invalidConfig, "heartbeatTick must be positive, got \(heartbeatTick)")
        }
        if electionTick <= heartbeatTick {
            throw RaftError(
                .invalidConfig,
                "electionTick (\(electionTick)) must be greater than heartbeatTick (\(heartbeatTick))"
            )
        }
        if maxInflightMsgs <= 0 {
            throw RaftError(.invalidConfig, "maxInflightMsgs must be positive, got \(maxInflightMsgs)")
        }
        if maxSizePerMsg < 0 || maxInflightBytes < 0 || maxUncommittedEntriesSize < 0 || maxCommittedSizePerReady < 0 {
            throw RaftError(.invalidConfig, "size limits must not be negative")
        }
        if maxInflightBytes != 0 && maxInflightBytes < maxSizePerMsg {
            throw RaftError(
                .invalidConfig,
                "maxInflightBytes (\(maxInflightBytes)) must be 0 or at least maxSizePerMsg (\(maxSizePerMsg))"
            )
        }
        if readOnlyOption == .leaseBased && !checkQuorum {
            throw RaftError(.invalidConfig, "readOnlyOption .leaseBased requires checkQuorum")
        }
    }
}
