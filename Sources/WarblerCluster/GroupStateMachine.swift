import WarblerRaft
import WarblerStorage

/// The application state a Raft group's committed entries are applied to.
///
/// Applying MUST be deterministic and MUST stage its writes into the batch it is given: the driver writes the
/// log and the applied state in one synced batch, so they can never disagree after a crash.
public protocol GroupStateMachine: Sendable {
    /// What applying one entry produced, handed back to whoever proposed it.
    associatedtype Outcome: Sendable

    /// The last index whose effects are in the stored state.
    func appliedIndex() throws(StorageError) -> UInt64

    /// Applies committed normal entries (in index order), staging writes into `batch`; one outcome per entry.
    func apply(_ entries: [Entry], into batch: WriteBatch) throws(StorageError) -> [Outcome]
}
