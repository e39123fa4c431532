/// Why a proposal through a ``GroupDriver`` did not produce an outcome.
public struct GroupDriverError: Error, Sendable, Hashable, CustomStringConvertible {
    public struct Code: Sendable, Hashable, RawRepresentable, CustomStringConvertible {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// This node cannot accept proposals now (not the leader, no quorum, too much in flight). Nothing was
        /// appended; retry, possibly elsewhere.
        public static let unavailable = Code(rawValue: "group.unavailable")
        /// The entry was appended but leadership changed before it committed: it may or may not commit.
        public static let outcomeUnknown = Code(rawValue: "group.outcome_unknown")
        /// The driver stopped (shutdown, or a storage failure that stops the group).
        public static let stopped = Code(rawValue: "group.stopped")
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
}
