/// An in-memory ``RaftStorage``, for tests, simulations and benchmarks.
///
/// It behaves as a durable log: whatever the shell appends survives a "crash" of the ``RawNode`` that reads
/// it. Not thread-safe; use it from one task.
public final class MemoryStorage: RaftStorage {
    /// The persisted hard state.
    public private(set) var hardState = HardState()
    private var snap = Snapshot()
    /// `log[0]` is a dummy holding the snapshot's index and term; real entries follow.
    private var log: [Entry] = [Entry()]

    /// Creates an empty storage (an uninitialised node that waits for a snapshot from a leader).
    public init() {}

    /// Creates a storage bootstrapped with a membership at `index` (as if a snapshot had been taken there).
    public init(bootstrap confState: ConfState, index: UInt64 = 1, term: UInt64 = 1) {
        snap = Snapshot(metadata: SnapshotMetadata(index: index, term: term, confState: confState))
        log = [Entry(term: term, index: index)]
        // The bootstrap state is committed, and its term is over: the first election is for a later term.
        hardState = HardState(term: term, vote: noneNode, commit: index)
    }

    public func initialState() throws(RaftError) -> (HardState, ConfState) {
        (hardState, snap.metadata.confState)
    }

    /// Persists the hard state.
    public func setHardState(_ state: HardState) { hardState = state }

    public func entries(from low: UInt64, to high: UInt64, maxSize: Int) throws(RaftError) -> [Entry] {
        let offset = log[0].index
        if low <= offset { throw RaftError(.compacted, "entry \(low) was compacted (first is \(offset + 1))") }
        if high > lastIndexValue + 1 {
            preconditionFailure("raft: entries(\(low)..<\(high)) beyond last index \(lastIndexValue)")
        }
        if log.count == 1 { throw RaftError(.unavailable, "log is empty") }
        return Array(limitSize(log[Int(low - offset)..<Int(high - offset)], maxSize))
    }

    public func term(at index: UInt64) throws(RaftError) -> UInt64 {
        let offset = log[0].index
        if index < offset { throw RaftError(.compacted, "term of compacted entry \(index)") }
        let position = Int(index - offset)
        if position >= log.count { throw RaftError(.unavailable, "term of missing entry \(index)") }
        return log[position].term
    }

    public func firstIndex() throws(RaftError) -> UInt64 { log[0].index + 1 }
    public func lastIndex() throws(RaftError) -> UInt64 { lastIndexValue }
    private var lastIndexValue: UInt64 { log[0].index + UInt64(log.count) - 1 }
    public func snapshot() throws(RaftError) -> Snapshot { snap }

    /// Replaces the log with a snapshot (a follower installing one from its leader).
    public func applySnapshot(_ snapshot: Snapshot) throws(RaftError) {
        if snapshot.metadata.index <= snap.metadata.index {
            throw RaftError(
                .snapshotOutOfDate,
                "snapshot at \(snapshot.metadata.index) is not newer than \(snap.metadata.index)"
            )
        }
        snap = snapshot
        log = [Entry(term: snapshot.metadata.term, index: snapshot.metadata.index)]
    }

    /// Records a snapshot of the application state at `index` (which MUST be applied), so that
    /// ``compact(upTo:)`` may discard the entries it covers.
    @discardableResult
    public func createSnapshot(at index: UInt64, confState: ConfState, data: [UInt8]) throws(RaftError) -> Snapshot {
        if index <= snap.metadata.index {
            throw RaftError(.snapshotOutOfDate, "snapshot at \(index) is not newer than \(snap.metadata.index)")
        }
        if index > lastIndexValue {
            preconditionFailure("raft: snapshot at \(index) beyond last index \(lastIndexValue)")
        }
        let term = log[Int(index - log[0].index)].term
        snap = Snapshot(data: data, metadata: SnapshotMetadata(index: index, term: term, confState: confState))
        return snap
    }

    /// Discards entries up to and including `index`; they MUST be covered by a snapshot.
    public func compact(upTo index: UInt64) throws(RaftError) {
        let offset = log[0].index
        if index <= offset { throw RaftError(.compacted, "already compacted past \(index)") }
        if index > lastIndexValue { preconditionFailure("raft: compact(\(index)) beyond last index \(lastIndexValue)") }
        let position = Int(index - offset)
        var kept = [Entry(term: log[position].term, index: log[position].index)]
        kept.append(contentsOf: log[(position + 1)...])
        log = kept
    }

    /// Persists entries, replacing any conflicting tail.
    public func append(_ entries: [Entry]) {
        guard let first = entries.first else { return }
        let firstStored = log[0].index + 1
        let last = first.index + UInt64(entries.count) - 1
        if last < firstStored { return }  // Everything is already covered by the snapshot.
        var incoming = entries[...]
        if firstStored > first.index { incoming = entries[Int(firstStored - first.index)...] }
        let position = Int(incoming.first!.index - log[0].index)
        if position < log.count {
            log.removeSubrange(position...)
        } else if position > log.count {
            preconditionFailure(
                "raft: missing log entries: last \(lastIndexValue), appending at \(incoming.first!.index)"
            )
        }
        log.append(contentsOf: incoming)
    }
}
