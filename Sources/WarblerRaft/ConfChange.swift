/// A single-server membership change (Raft thesis §4.1).
///
/// Warbler changes membership one server at a time: any two majorities of configurations that differ by one
/// voter overlap, so no joint configuration is needed. A change takes effect when it is applied, and a leader
/// accepts a new change only once the previous one is applied (see `docs/raft.md`).
public struct ConfChange: Sendable, Hashable {
    /// What the change does.
    public enum Kind: UInt8, Sendable, Hashable {
        /// Add a voter, or promote a learner to voter.
        case addNode = 0
        /// Remove a voter or a learner.
        case removeNode = 1
        /// Add a learner (or demote a voter to learner).
        case addLearner = 2
    }

    /// What the change does.
    public var kind: Kind
    /// The node it concerns.
    public var nodeID: NodeID
    /// Opaque context for the application (for example the node's address).
    public var context: [UInt8]

    /// Creates a membership change.
    public init(_ kind: Kind, nodeID: NodeID, context: [UInt8] = []) {
        self.kind = kind
        self.nodeID = nodeID
        self.context = context
    }

    /// The entry payload: one byte kind, eight bytes big-endian node id, then the context.
    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = [kind.rawValue]
        bytes.reserveCapacity(9 + context.count)
        for shift in stride(from: 56, through: 0, by: -8) {
            bytes.append(UInt8(truncatingIfNeeded: nodeID >> UInt64(shift)))
        }
        bytes.append(contentsOf: context)
        return bytes
    }

    /// Decodes an entry payload written by ``encoded()``.
    public init(decoding bytes: [UInt8]) throws(RaftError) {
        guard bytes.count >= 9, let kind = Kind(rawValue: bytes[0]) else {
            throw RaftError(.corrupt, "conf change entry of \(bytes.count) bytes cannot be decoded")
        }
        var id: UInt64 = 0
        for i in 1...8 { id = id << 8 | UInt64(bytes[i]) }
        self.init(kind, nodeID: id, context: Array(bytes[9...]))
    }
}
