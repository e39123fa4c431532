import WarblerRaft
import WarblerWire

/// The durable log of one Raft group, in the `raft` column family of the node's ``Database``. Many groups
/// share one database; a scheduling round stages every group's writes into one ``WriteBatch`` and syncs once.
///
/// Reads implement ``RaftStorage``. Writes are staged into a batch and take effect in this object at once:
/// the caller MUST then write the batch with `sync: true` before sending the Ready's messages, and MUST treat a
/// failed write as fatal for the process (a log that may or may not be on disk cannot be reasoned about —
/// restart and reload). Not thread-safe: the group's driver owns it.
public final class RaftLogStore: RaftStorage {
    /// The group this log belongs to.
    public let group: UInt32
    private let database: Database
    private let family: ColumnFamily
    private var hard: HardState
    /// Where the log starts: the last compaction, a snapshot received from a leader, or the bootstrap. Its
    /// data is empty after a compaction (the state machine holds the state; see ``snapshot()``).
    private var snap: Snapshot
    /// A snapshot of the applied state made for a follower the log cannot catch up (see ``offer(_:)``).
    private var served: Snapshot?
    /// Called (on the owner's thread) when Raft needs a snapshot the log does not hold: the owner makes one of
    /// the applied state and hands it to ``offer(_:)``; Raft asks again meanwhile, and sends it then.
    public var snapshotNeeded: (() -> Void)?
    /// The membership as of the applied index, as stored when the log was opened (see
    /// ``stage(appliedConfState:group:family:into:)``).
    private let appliedConfState: ConfState?
    /// The newest entries, contiguous and ending at the last index: a leader replicates what it just appended
    /// without reading it back from RocksDB. Bounded by ``entryCacheBytes``.
    private var cache: [Entry] = []
    private var cacheStart = 0
    private var cacheBytes = 0
    /// The most payload bytes the entry cache keeps per group.
    public static let entryCacheBytes = 4 << 20
    /// `terms[i]` is the term of the entry at `snapshotIndex + i`; `terms[0]` is the snapshot's term.
    private var terms: [UInt64]

    /// Opens the log of `group`, loading its hard state, where it starts and its entries' terms.
    ///
    /// - Throws: ``StorageError/Code/corruption`` when records cannot be decoded or the log has holes.
    public init(database: Database, family: ColumnFamily, group: UInt32) throws(StorageError) {
        self.database = database
        self.family = family
        self.group = group
        if let bytes = try database.get(RaftLogKeys.hardState(group: group), in: family) {
            do { hard = try RaftRecordCodec.decodeHardState(bytes) } catch {
                throw StorageError(.corruption, "hard state of group \(group) cannot be decoded", cause: "\(error)")
            }
        } else {
            hard = HardState()
        }
        if let bytes = try database.get(RaftLogKeys.snapshot(group: group), in: family) {
            do { snap = try RaftRecordCodec.decodeSnapshot(bytes) } catch {
                throw StorageError(.corruption, "snapshot of group \(group) cannot be decoded", cause: "\(error)")
            }
        } else {
            snap = Snapshot()
        }
        if let bytes = try database.get(RaftLogKeys.confState(group: group), in: family) {
            do { appliedConfState = try RaftRecordCodec.decodeConfState(bytes) } catch {
                throw StorageError(.corruption, "membership of group \(group) cannot be decoded", cause: "\(error)")
            }
        } else {
            appliedConfState = nil
        }
        terms = [snap.metadata.term]
        let iterator = database.makeIterator(
            in: family,
            upperBound: RaftLogKeys.entry(group: group, index: .max)
        )
        iterator.seek(to: RaftLogKeys.entry(group: group, index: snap.metadata.index + 1))
        var expected = snap.metadata.index + 1
        while iterator.isValid {
            guard let index = RaftLogKeys.index(ofEntryKey: iterator.key) else { break }
            guard index == expected else {
                throw StorageError(
                    .corruption,
                    "group \(group) log has a hole: expected entry \(expected), found \(index)"
                )
            }
            let entry: Entry
            do { entry = try RaftRecordCodec.decodeEntry(iterator.value) } catch {
                throw StorageError(.corruption, "entry \(index) of group \(group) cannot be decoded", cause: "\(error)")
            }
            terms.append(entry.term)
            expected += 1
            iterator.next()
        }
        try iterator.checkError()
    }

    /// Creates the first state of a new group (a one-voter cluster, or the first node of a cluster): a
    /// snapshot at index 1, term 1, holding `confState`, committed. Refuses to overwrite an existing log.
    /// `data` is the application state at index 1 (what a member that joins later receives first).
    public func bootstrap(_ confState: ConfState, data: [UInt8] = [], into batch: WriteBatch) throws(StorageError) {
        guard hard.isEmpty, snap.isEmpty, terms.count == 1 else {
            throw StorageError(.invalidArgument, "group \(group) already has a log; it cannot be bootstrapped again")
        }
        let snapshot = Snapshot(data: data, metadata: SnapshotMetadata(index: 1, term: 1, confState: confState))
        stageSnapshot(snapshot, into: batch)
        stage(hardState: HardState(term: 1, vote: noneNode, commit: 1), into: batch)
    }

    /// Every group that has a hard state or a snapshot in `family`, ascending.
    public static func groups(in database: Database, family: ColumnFamily) throws(StorageError) -> [UInt32] {
        var groups = Set<UInt32>()
        for tag in [RaftLogKeys.hardStateTag, RaftLogKeys.snapshotTag] {
            for row in try database.scan(in: family, from: [tag], to: [tag + 1]) where row.key.count == 5 {
                groups.insert(row.key[1...].reduce(0) { $0 << 8 | UInt32($1) })
            }
        }
        return groups.sorted()
    }

    /// Stages the deletion of everything `group` stored in `family` (the node left the group). A log object of
    /// the group must not be used afterwards.
    public static func stageDestroy(group: UInt32, family: ColumnFamily, into batch: WriteBatch) {
        batch.deleteRange(
            from: RaftLogKeys.entry(group: group, index: 0),
            to: RaftLogKeys.entry(group: group, index: .max),
            in: family
        )
        batch.delete(RaftLogKeys.entry(group: group, index: .max), in: family)
        batch.delete(RaftLogKeys.hardState(group: group), in: family)
        batch.delete(RaftLogKeys.snapshot(group: group), in: family)
        batch.delete(RaftLogKeys.confState(group: group), in: family)
    }

    /// True when the group has no state at all (never bootstrapped, never received a snapshot).
    public var isEmpty: Bool { hard.isEmpty && snap.isEmpty && terms.count == 1 }

    // MARK: - RaftStorage

    public func initialState() throws(RaftError) -> (HardState, ConfState) {
        (hard, appliedConfState ?? snap.metadata.confState)
    }

    /// Stages the membership that results from applying conf changes (or installing a snapshot), in the batch
    /// that records the applied state: a restart must come back with the membership of its applied index, not
    /// of its last snapshot (a one-voter bootstrap snapshot would otherwise let a restarted member elect itself
    /// alone). Written by the group's applier, not by the log's owner, so it changes nothing in a loaded log.
    public static func stage(appliedConfState: ConfState, group: UInt32, family: ColumnFamily, into batch: WriteBatch) {
        batch.put(RaftLogKeys.confState(group: group), RaftRecordCodec.encode(appliedConfState), in: family)
    }

    public func entries(from low: UInt64, to high: UInt64, maxSize: Int) throws(RaftError) -> [Entry] {
        let first = snap.metadata.index + 1
        if low < first {
            throw RaftError(.compacted, "entry \(low) of group \(group) was compacted (first is \(first))")
        }
        if high > lastIndexValue + 1 {
            preconditionFailure(
                "storage: entries(\(low)..<\(high)) beyond last index \(lastIndexValue) of group \(group)"
            )
        }
        if low >= high { return [] }
        if let cachedFirst = cache[cacheStart...].first?.index, low >= cachedFirst {
            var result: [Entry] = []
            var size = 0
            for entry in cache[(cacheStart + Int(low - cachedFirst))..<(cacheStart + Int(high - cachedFirst))] {
                size += entry.payloadSize
                if !result.isEmpty && size > maxSize { break }
                result.append(entry)
            }
            return result
        }
        do {
            let rows = try database.scan(
                in: family,
                from: RaftLogKeys.entry(group: group, index: low),
                to: RaftLogKeys.entry(group: group, index: high)
            )
            guard rows.count == Int(high - low) else {
                throw StorageError(.corruption, "group \(group) holds \(rows.count) of entries [\(low), \(high))")
            }
            var result: [Entry] = []
            result.reserveCapacity(rows.count)
            var size = 0
            for row in rows {
                let entry = try RaftRecordCodec.decodeEntry(row.value)
                size += entry.payloadSize
                if !result.isEmpty && size > maxSize { break }
                result.append(entry)
            }
            return result
        } catch let error as StorageError {
            // Raft cannot continue on a log it cannot read.
            preconditionFailure("storage: reading group \(group) entries [\(low), \(high)) failed: \(error)")
        } catch {
            preconditionFailure("storage: entry of group \(group) cannot be decoded: \(error)")
        }
    }

    public func term(at index: UInt64) throws(RaftError) -> UInt64 {
        let base = snap.metadata.index
        if index < base { throw RaftError(.compacted, "term of compacted entry \(index) of group \(group)") }
        let position = Int(index - base)
        if position >= terms.count { throw RaftError(.unavailable, "term of missing entry \(index) of group \(group)") }
        return terms[position]
    }

    public func firstIndex() throws(RaftError) -> UInt64 { snap.metadata.index + 1 }
    public func lastIndex() throws(RaftError) -> UInt64 { lastIndexValue }
    private var lastIndexValue: UInt64 { snap.metadata.index + UInt64(terms.count) - 1 }

    /// The snapshot Raft sends a follower whose next entry was compacted: the one the log starts from when it
    /// holds data (received from a leader, or given at bootstrap or compaction), else the last one offered
    /// that is not older than the log's start. Without either, asks for one through ``snapshotNeeded`` and
    /// throws ``RaftError/Code/snapshotTemporarilyUnavailable`` (Raft tries again on a later heartbeat).
    public func snapshot() throws(RaftError) -> Snapshot {
        if let served, served.metadata.index >= snap.metadata.index { return served }
        guard snap.data.isEmpty, let snapshotNeeded else { return snap }
        snapshotNeeded()
        throw RaftError(.snapshotTemporarilyUnavailable, "group \(group) is making a snapshot of its state")
    }

    /// Keeps `snapshot` (of the applied state, at an index this log still holds or has compacted) for
    /// ``snapshot()``; an older one than the log's start, or than the one kept, is dropped.
    public func offer(_ snapshot: Snapshot) {
        let index = snapshot.metadata.index
        guard index >= snap.metadata.index, index <= lastIndexValue, index > served?.metadata.index ?? 0 else { return }
        served = snapshot
    }

    // MARK: - Staging writes

    /// Stages everything a Ready asks to persist: its snapshot, then its entries, then its hard state.
    public func stage(_ ready: Ready, into batch: WriteBatch) {
        if let snapshot = ready.snapshot { stageSnapshot(snapshot, into: batch) }
        stage(entries: ready.entries, into: batch)
        if let hardState = ready.hardState { stage(hardState: hardState, into: batch) }
    }

    /// Stages appended entries, deleting any stored tail they replace.
    public func stage(entries: [Entry], into batch: WriteBatch) {
        guard let first = entries.first else { return }
        let base = snap.metadata.index
        // Entries at or below the snapshot are already covered by it.
        let incoming = entries.drop { $0.index <= base }
        guard let start = incoming.first?.index else { return }
        let oldLast = lastIndexValue
        precondition(start <= oldLast + 1, "storage: group \(group) appending at \(first.index) after last \(oldLast)")
        if start <= oldLast {
            batch.deleteRange(
                from: RaftLogKeys.entry(group: group, index: start),
                to: RaftLogKeys.entry(group: group, index: oldLast + 1),
                in: family
            )
            terms.removeSubrange(Int(start - base)...)
        }
        for entry in incoming {
            batch.put(RaftLogKeys.entry(group: group, index: entry.index), RaftRecordCodec.encode(entry), in: family)
            terms.append(entry.term)
        }
        cacheAppend(incoming)
    }

    private func cacheAppend(_ incoming: ArraySlice<Entry>) {
        guard let start = incoming.first?.index else { return }
        if let cachedFirst = cache[cacheStart...].first?.index, start >= cachedFirst,
            start <= cachedFirst + UInt64(cache.count - cacheStart)
        {
            // Drop a conflicting tail, then append.
            let keep = cacheStart + Int(start - cachedFirst)
            for entry in cache[keep...] { cacheBytes -= entry.payloadSize + 64 }
            cache.removeSubrange(keep...)
        } else {
            cacheClear()
        }
        for entry in incoming {
            cache.append(entry)
            cacheBytes += entry.payloadSize + 64
        }
        while cacheBytes > Self.entryCacheBytes, cacheStart < cache.count - 1 {
            cacheBytes -= cache[cacheStart].payloadSize + 64
            cacheStart += 1
        }
        if cacheStart > 1024 && cacheStart > cache.count / 2 {
            cache.removeFirst(cacheStart)
            cacheStart = 0
        }
    }

    private func cacheClear() {
        cache = []
        cacheStart = 0
        cacheBytes = 0
    }

    /// Forgets cached entries up to `index` (compacted).
    private func cacheDrop(through index: UInt64) {
        while let first = cache[cacheStart...].first, first.index <= index {
            cacheBytes -= first.payloadSize + 64
            cacheStart += 1
        }
    }

    /// Stages the hard state.
    public func stage(hardState: HardState, into batch: WriteBatch) {
        batch.put(RaftLogKeys.hardState(group: group), RaftRecordCodec.encode(hardState), in: family)
        hard = hardState
    }

    /// Stages a snapshot received from a leader: it replaces the whole log.
    public func stageSnapshot(_ snapshot: Snapshot, into batch: WriteBatch) {
        batch.deleteRange(
            from: RaftLogKeys.entry(group: group, index: 0),
            to: RaftLogKeys.entry(group: group, index: .max),
            in: family
        )
        batch.put(RaftLogKeys.snapshot(group: group), RaftRecordCodec.encode(snapshot), in: family)
        cacheClear()
        snap = snapshot
        served = nil
        terms = [snapshot.metadata.term]
    }

    /// Stages discarding the entries up to `index` (applied, and committed in this log). With empty `data` —
    /// what the runtime does — the log keeps only where it now starts: the state machine's stored state is the
    /// state, so the batch MUST be synced, which also makes durable every unsynced apply written before it
    /// (RocksDB's write-ahead log is one sequence). With `data` (a state machine kept elsewhere, as in the
    /// simulation) the log keeps that snapshot and serves it.
    public func stageCompaction(
        at index: UInt64,
        confState: ConfState,
        data: [UInt8] = [],
        into batch: WriteBatch
    ) throws(StorageError) {
        let base = snap.metadata.index
        guard index > base else {
            throw StorageError(.invalidArgument, "group \(group) is already compacted to \(base), not past \(index)")
        }
        guard index <= lastIndexValue, index <= hard.commit else {
            throw StorageError(.invalidArgument, "group \(group) cannot compact to \(index): not committed")
        }
        let term = terms[Int(index - base)]
        batch.deleteRange(
            from: RaftLogKeys.entry(group: group, index: base + 1),
            to: RaftLogKeys.entry(group: group, index: index + 1),
            in: family
        )
        let snapshot = Snapshot(data: data, metadata: SnapshotMetadata(index: index, term: term, confState: confState))
        batch.put(RaftLogKeys.snapshot(group: group), RaftRecordCodec.encode(snapshot), in: family)
        terms.removeFirst(Int(index - base))
        cacheDrop(through: index)
        snap = snapshot
        if let served, served.metadata.index < index { self.served = nil }
    }
}
