/// Entries and a snapshot that the leader or a follower accepted but the shell has not yet persisted.
struct UnstableLog {
    /// A snapshot received from a leader, waiting to be persisted.
    var snapshot: Snapshot?
    /// Entries not yet persisted; `entries[i]` has index `offset + i`.
    var entries: [Entry] = []
    var offset: UInt64

    /// The first index, if a pending snapshot determines it.
    var firstIndex: UInt64? { snapshot.map { $0.metadata.index + 1 } }

    /// The last index, if anything unstable determines it.
    var lastIndex: UInt64? {
        if !entries.isEmpty { return offset + UInt64(entries.count) - 1 }
        return snapshot?.metadata.index
    }

    /// The term of the entry at `index`, if it is unstable.
    func term(at index: UInt64) -> UInt64? {
        if index < offset {
            if let snapshot, snapshot.metadata.index == index { return snapshot.metadata.term }
            return nil
        }
        guard let last = lastIndex, index <= last else { return nil }
        if entries.isEmpty { return nil }
        return entries[Int(index - offset)].term
    }

    /// Forgets entries up to `index` once they are persisted, unless they were replaced meanwhile.
    mutating func stableTo(index: UInt64, term: UInt64) {
        guard let stored = self.term(at: index), stored == term, index >= offset else { return }
        entries.removeFirst(Int(index + 1 - offset))
        offset = index + 1
        if entries.isEmpty && entries.capacity > 1024 { entries = [] }
    }

    /// Forgets the pending snapshot once it is persisted.
    mutating func stableSnapshotTo(index: UInt64) {
        if snapshot?.metadata.index == index { snapshot = nil }
    }

    mutating func restore(_ snapshot: Snapshot) {
        offset = snapshot.metadata.index + 1
        entries = []
        self.snapshot = snapshot
    }

    /// Appends entries, truncating any unstable tail they conflict with.
    mutating func truncateAndAppend(_ new: some Collection<Entry>) {
        guard let first = new.first else { return }
        let after = first.index
        if after == offset + UInt64(entries.count) {
            entries.append(contentsOf: new)
        } else if after <= offset {
            // The new entries replace everything unstable (and possibly some stable entries too).
            offset = after
            entries = Array(new)
        } else {
            entries.removeSubrange(Int(after - offset)...)
            entries.append(contentsOf: new)
        }
    }

    /// Unstable entries in `[low, high)`; the caller has checked the bounds.
    func slice(_ low: UInt64, _ high: UInt64) -> ArraySlice<Entry> {
        precondition(
            low >= offset && high <= offset + UInt64(entries.count) && low <= high,
            "raft: unstable slice [\(low), \(high)) out of [\(offset), \(offset + UInt64(entries.count)))"
        )
        return entries[Int(low - offset)..<Int(high - offset)]
    }
}
