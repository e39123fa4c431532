/// The durable log a Raft node reads from.
///
/// The shell writes to it (entries, hard state, snapshots from each ``Ready``); the core only reads. An
/// implementation MUST return exactly what was persisted: entries it returns are taken as durable.
public protocol RaftStorage: AnyObject {
    /// The persisted hard state and the membership at the latest snapshot.
    func initialState() throws(RaftError) -> (HardState, ConfState)
    /// Entries in `[low, high)`, at least one if any exist, and no more than `maxSize` bytes beyond the first.
    /// Throws ``RaftError/Code/compacted`` when `low` was compacted and ``RaftError/Code/unavailable`` when the
    /// range is not there.
    func entries(from low: UInt64, to high: UInt64, maxSize: Int) throws(RaftError) -> [Entry]
    /// The term of the entry at `index`; valid for `firstIndex - 1 ... lastIndex`.
    func term(at index: UInt64) throws(RaftError) -> UInt64
    /// The index of the first entry still available (the snapshot index + 1).
    func firstIndex() throws(RaftError) -> UInt64
    /// The index of the last entry (the snapshot index when the log is empty).
    func lastIndex() throws(RaftError) -> UInt64
    /// The latest snapshot. May throw ``RaftError/Code/snapshotTemporarilyUnavailable``.
    func snapshot() throws(RaftError) -> Snapshot
}

/// Returns the longest prefix of `entries` whose payloads fit in `maxSize` bytes, and always the first entry.
func limitSize(_ entries: ArraySlice<Entry>, _ maxSize: Int) -> ArraySlice<Entry> {
    guard let first = entries.first else { return entries }
    var size = first.payloadSize
    var end = entries.startIndex + 1
    while end < entries.endIndex {
        size += entries[end].payloadSize
        if size > maxSize { break }
        end += 1
    }
    return entries[entries.startIndex..<end]
}
