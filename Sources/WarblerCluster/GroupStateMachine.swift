import WarblerRaft
import WarblerStorage

/// One key and value of a group's state, as a snapshot carries it.
public struct StateRecord: Sendable, Hashable {
    public var key: [UInt8]
    public var value: [UInt8]
    public init(key: [UInt8], value: [UInt8]) {
        self.key = key
        self.value = value
    }
}

/// The application state a Raft group's committed entries are applied to, one instance per group.
///
/// Applying MUST be deterministic and MUST stage its writes into the batch it is given: the runtime writes the
/// log and the applied state in one synced batch, so they can never disagree after a crash.
public protocol GroupStateMachine: Sendable {
    /// What applying one entry produced, handed back to whoever proposed it (possibly on another node).
    associatedtype Outcome: Sendable

    /// The last index whose effects are in the stored state.
    func appliedIndex() throws(StorageError) -> UInt64

    /// Applies committed normal entries (in index order), staging writes into `batch`; one outcome per entry.
    func apply(_ entries: [Entry], into batch: WriteBatch) throws(StorageError) -> [Outcome]

    /// Every record of the group's state as `reading` sees it (a consistent view taken right after the write
    /// that applied some index; the runtime scans it off the scheduler while the group goes on), in key order.
    func snapshotState(reading: ReadSnapshot) throws(StorageError) -> [StateRecord]

    /// Stages replacing the whole state with `records`, applied up to `index` (a snapshot from the leader).
    func restore(_ records: [StateRecord], index: UInt64, into batch: WriteBatch) throws(StorageError)

    /// Stages deleting the whole state (this node no longer replicates the group).
    func destroy(into batch: WriteBatch)

    /// Encodes an outcome for the node that forwarded the proposal.
    static func encode(_ outcome: Outcome) -> [UInt8]

    /// Decodes what ``encode(_:)`` produced.
    static func decodeOutcome(_ bytes: [UInt8]) throws -> Outcome
}
