import WarblerWire

/// Why a proposal or a read through the ``RaftHost`` did not produce a result.
public struct ClusterError: Error, Sendable, Hashable, CustomStringConvertible {
    public struct Code: Sendable, Hashable, RawRepresentable, CustomStringConvertible {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// No leader could take the proposal in time (election, minority side of a partition). Nothing was
        /// appended; retry later.
        public static let unavailable = Code(rawValue: "group.unavailable")
        /// The entry was appended but leadership changed before it committed: it may or may not commit.
        public static let outcomeUnknown = Code(rawValue: "group.outcome_unknown")
        /// The node is shutting down, or storage failed and the node stopped.
        public static let stopped = Code(rawValue: "group.stopped")
        /// The command was refused by the cluster metadata (a bad join, removing the last node, …).
        public static let refused = Code(rawValue: "cluster.refused")
    }

    public var code: Code
    public var message: String
    /// The leader this node knows of, when the error is a redirect.
    public var leaderHint: UInt64?

    public init(_ code: Code, _ message: String, leaderHint: UInt64? = nil) {
        self.code = code
        self.message = message
        self.leaderHint = leaderHint
    }

    public var description: String { "\(code): \(message)" }

    /// The error another node answered a request with (``RaftHost/peerError(_:)`` made it there).
    init(_ record: Warbler_Peer_V1_PeerError) {
        self.init(
            Code(rawValue: record.code),
            record.message,
            leaderHint: record.leaderHint == 0 ? nil : record.leaderHint
        )
    }
}
