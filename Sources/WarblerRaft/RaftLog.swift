/// The log as the core sees it: persisted entries in storage, then the unstable tail.
struct RaftLog {
    let storage: any RaftStorage
    var unstable: UnstableLog
    /// The highest index known to be committed on a quorum.
    var committed: UInt64
    /// The highest index the application has applied.
    var applied: UInt64
    /// Maximum bytes of committed entries handed out in one batch (0 = unlimited).
    let maxCommittedSize: Int

    init(storage: any RaftStorage, maxCommittedSize: Int) throws(RaftError) {
        self.storage = storage
        let first = try storage.firstIndex()
        let last = try storage.lastIndex()
        unstable = UnstableLog(offset: last + 1)
        committed = first - 1
        applied = first - 1
        self.maxCommittedSize = maxCommittedSize
    }

    var firstIndex: UInt64 {
        if let index = unstable.firstIndex { return index }
        return try! storage.firstIndex()
    }

    var lastIndex: UInt64 {
        if let index = unstable.lastIndex { return index }
        return try! storage.lastIndex()
    }

    var lastTerm: UInt64 {
        guard let term = try? term(at: lastIndex) else {
            preconditionFailure("raft: unexpected error reading the term of the last entry \(lastIndex)")
        }
        return term
    }

    /// The term of the entry at `index`; throws when compacted or missing.
    func term(at index: UInt64) throws(RaftError) -> UInt64 {
        // The valid range is [firstIndex - 1, lastIndex]: the entry before the first is the snapshot's.
        let dummy = firstIndex - 1
        if index < dummy { throw RaftError(.compacted, "term of compacted entry \(index)") }
        if index > lastIndex { throw RaftError(.unavailable, "term of missing entry \(index)") }
        if let term = unstable.term(at: index) { return term }
        return try storage.term(at: index)
    }

    /// The term at `index`, or 0 when it is not available.
    func termOrZero(_ index: UInt64) -> UInt64 { (try? term(at: index)) ?? 0 }

    func matchTerm(_ index: UInt64, _ term: UInt64) -> Bool {
        guard let stored = try? self.term(at: index) else { return false }
        return stored == term
    }

    /// Raft §5.4.1: a candidate's log is at least as up to date as ours.
    func isUpToDate(lastIndex candidateIndex: UInt64, term candidateTerm: UInt64) -> Bool {
        let ourTerm = lastTerm
        return candidateTerm > ourTerm || (candidateTerm == ourTerm && candidateIndex >= lastIndex)
    }

    /// Follower side of AppendEntries: appends `entries` after `(index, logTerm)` if the logs match there.
    /// Returns the index of the last new entry, or nil on mismatch.
    mutating func maybeAppend(index: UInt64, logTerm: UInt64, commit: UInt64, entries: [Entry]) -> UInt64? {
        guard matchTerm(index, logTerm) else { return nil }
        let lastNew = index + UInt64(entries.count)
        let conflict = findConflict(entries)
        if conflict != 0 {
            if conflict <= committed {
                preconditionFailure("raft: entry \(conflict) conflicts with committed entry (committed \(committed))")
            }
            let start = Int(conflict - (index + 1))
            append(entries[start...])
        }
        commitTo(min(commit, lastNew))
        return lastNew
    }

    /// Appends entries (leader or follower) and returns the new last index.
    @discardableResult
    mutating func append(_ entries: some Collection<Entry>) -> UInt64 {
        guard let first = entries.first else { return lastIndex }
        if first.index - 1 < committed {
            preconditionFailure("raft: appending after \(first.index - 1) would rewrite committed \(committed)")
        }
        unstable.truncateAndAppend(entries)
        return lastIndex
    }

    /// The index of the first entry that conflicts with our log (same index, other term), or 0.
    func findConflict(_ entries: [Entry]) -> UInt64 {
        for entry in entries where !matchTerm(entry.index, entry.term) { return entry.index }
        return 0
    }

    /// The largest `(index, term)` at or below `index` whose term is at most `term` — where a leader's probe
    /// should continue after a rejection (fast conflict back-off).
    func findConflictByTerm(index: UInt64, term: UInt64) -> (UInt64, UInt64) {
        var index = index
        while index > 0 {
            guard let stored = try? self.term(at: index) else { return (index, 0) }
            if stored <= term { return (index, stored) }
            index -= 1
        }
        return (0, 0)
    }

    var unstableEntries: [Entry] { unstable.entries }

    /// Committed entries the application has not applied yet.
    var hasNextCommittedEntries: Bool {
        let low = max(applied + 1, firstIndex)
        return committed + 1 > low
    }

    func nextCommittedEntries() -> [Entry] {
        let low = max(applied + 1, firstIndex)
        guard committed + 1 > low else { return [] }
        let size = maxCommittedSize == 0 ? Int.max : maxCommittedSize
        guard let entries = try? slice(low, committed + 1, maxSize: size) else {
            preconditionFailure("raft: cannot read committed entries [\(low), \(committed + 1))")
        }
        return entries
    }

    /// True while committed-but-unapplied entries include a membership change.
    var hasUnappliedConfChange: Bool {
        guard committed > applied else { return false }
        let low = max(applied + 1, firstIndex)
        guard let entries = try? slice(low, committed + 1, maxSize: Int.max) else { return false }
        return entries.contains { $0.kind == .confChange }
    }

    mutating func commitTo(_ index: UInt64) {
        guard committed < index else { return }
        if lastIndex < index {
            preconditionFailure(
                "raft: commit \(index) is beyond last index \(lastIndex); the log is corrupt or truncated"
            )
        }
        committed = index
    }

    mutating func appliedTo(_ index: UInt64) {
        guard index != 0 else { return }
        if committed < index || index < applied {
            preconditionFailure("raft: applied \(index) outside [\(applied), \(committed)]")
        }
        applied = index
    }

    mutating func stableTo(index: UInt64, term: UInt64) { unstable.stableTo(index: index, term: term) }
    mutating func stableSnapshotTo(index: UInt64) { unstable.stableSnapshotTo(index: index) }

    /// Leader: commits up to `index` if that entry is from the current term (Raft §5.4.2).
    mutating func maybeCommit(index: UInt64, term: UInt64) -> Bool {
        if index > committed && termOrZero(index) == term {
            commitTo(index)
            return true
        }
        return false
    }

    mutating func restore(_ snapshot: Snapshot) {
        committed = snapshot.metadata.index
        unstable.restore(snapshot)
    }

    func snapshot() throws(RaftError) -> Snapshot {
        if let snapshot = unstable.snapshot { return snapshot }
        return try storage.snapshot()
    }

    /// Entries from `index` to the end, at most `maxSize` bytes (at least one).
    func entries(from index: UInt64, maxSize: Int) throws(RaftError) -> [Entry] {
        if index > lastIndex { return [] }
        return try slice(index, lastIndex + 1, maxSize: maxSize)
    }

    /// Entries in `[low, high)` from storage and the unstable tail, at most `maxSize` bytes (at least one).
    func slice(_ low: UInt64, _ high: UInt64, maxSize: Int) throws(RaftError) -> [Entry] {
        if low > high { preconditionFailure("raft: invalid slice \(low) > \(high)") }
        let first = firstIndex
        if low < first { throw RaftError(.compacted, "entry \(low) was compacted (first is \(first))") }
        if high > lastIndex + 1 { preconditionFailure("raft: slice [\(low), \(high)) beyond last \(lastIndex)") }
        if low == high { return [] }
        var result: [Entry] = []
        if low < unstable.offset {
            let stored = try storage.entries(from: low, to: min(high, unstable.offset), maxSize: maxSize)
            // Storage returned fewer entries than asked: the size limit was hit.
            if UInt64(stored.count) < min(high, unstable.offset) - low { return stored }
            result = stored
        }
        if high > unstable.offset {
            let tail = unstable.slice(max(low, unstable.offset), high)
            if result.isEmpty {
                result = Array(tail)
            } else {
                result.append(contentsOf: tail)
            }
        }
        return Array(limitSize(result[...], maxSize))
    }
}
