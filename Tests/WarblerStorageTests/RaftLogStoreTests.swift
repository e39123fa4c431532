import Foundation
import Testing
import WarblerRaft

@testable import WarblerStorage

struct RaftLogStoreTests {
    func open(_ path: String) throws -> (Database, ColumnFamily) {
        var options = Database.Options()
        options.columnFamilies = ["raft"]
        let database = try Database(path: path, options: options)
        return (database, try database.columnFamily("raft"))
    }

    func entries(_ range: ClosedRange<UInt64>, term: UInt64) -> [Entry] {
        range.map { Entry(term: term, index: $0, data: Array("e\($0)".utf8)) }
    }

    @Test func aBootstrappedLogSurvivesReopening() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            let (database, family) = try open(path)
            let log = try RaftLogStore(database: database, family: family, group: 7)
            #expect(log.isEmpty)
            let batch = WriteBatch()
            try log.bootstrap(ConfState(voters: [1]), into: batch)
            log.stage(entries: entries(2...5, term: 2), into: batch)
            log.stage(hardState: HardState(term: 2, vote: 1, commit: 4), into: batch)
            try database.write(batch, sync: true)
        }
        let (database, family) = try open(path)
        let log = try RaftLogStore(database: database, family: family, group: 7)
        let (hard, conf) = try log.initialState()
        #expect(hard == HardState(term: 2, vote: 1, commit: 4))
        #expect(conf.voters == [1])
        #expect(try log.firstIndex() == 2)
        #expect(try log.lastIndex() == 5)
        #expect(try log.term(at: 1) == 1)
        #expect(try log.term(at: 5) == 2)
        #expect(try log.entries(from: 2, to: 6, maxSize: .max).map(\.data) == (2...5).map { Array("e\($0)".utf8) })
        #expect(try log.entries(from: 3, to: 6, maxSize: 0).count == 1)
    }

    @Test func bootstrappingTwiceIsRefused() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (database, family) = try open(path)
        let log = try RaftLogStore(database: database, family: family, group: 1)
        let batch = WriteBatch()
        try log.bootstrap(ConfState(voters: [1]), into: batch)
        try database.write(batch, sync: true)
        #expect(throws: StorageError.self) { try log.bootstrap(ConfState(voters: [1]), into: WriteBatch()) }
    }

    @Test func aConflictingTailIsReplacedOnDisk() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            let (database, family) = try open(path)
            let log = try RaftLogStore(database: database, family: family, group: 1)
            let batch = WriteBatch()
            try log.bootstrap(ConfState(voters: [1, 2, 3]), into: batch)
            log.stage(entries: entries(2...6, term: 2), into: batch)
            try database.write(batch, sync: true)
            let replace = WriteBatch()
            log.stage(entries: entries(4...4, term: 3), into: replace)
            try database.write(replace, sync: true)
            #expect(try log.lastIndex() == 4)
        }
        let (database, family) = try open(path)
        let log = try RaftLogStore(database: database, family: family, group: 1)
        #expect(try log.lastIndex() == 4)
        #expect(try log.term(at: 4) == 3)
        #expect(try log.term(at: 3) == 2)
    }

    /// The in-memory entry cache answers exactly what the disk holds: through appends, conflicting tails that
    /// replace cached entries, appends larger than the cache, and compaction.
    @Test func theEntryCacheAgreesWithTheDisk() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (database, family) = try open(path)
        let log = try RaftLogStore(database: database, family: family, group: 3)
        func check() throws {
            let reopened = try RaftLogStore(database: database, family: family, group: 3)
            let first = try log.firstIndex()
            let last = try log.lastIndex()
            #expect(try reopened.lastIndex() == last)
            for low in stride(from: first, through: last, by: UInt64.Stride(max(1, (last - first) / 7))) {
                let cached = try log.entries(from: low, to: last + 1, maxSize: .max)
                #expect(cached == (try reopened.entries(from: low, to: last + 1, maxSize: .max)))
                #expect(cached.first?.index == low && cached.last?.index == last)
            }
            #expect(try log.entries(from: first, to: last + 1, maxSize: 0).count == 1)
        }
        let batch = WriteBatch()
        try log.bootstrap(ConfState(voters: [1, 2, 3]), into: batch)
        log.stage(entries: entries(2...40, term: 2), into: batch)
        try database.write(batch, sync: true)
        try check()
        // A new leader's entries replace a cached tail.
        let replace = WriteBatch()
        log.stage(entries: entries(30...35, term: 3), into: replace)
        try database.write(replace, sync: true)
        try check()
        #expect(try log.entries(from: 30, to: 31, maxSize: .max).first?.term == 3)
        // More than the cache holds (payloads of 64 KiB): older entries come from disk.
        let big = WriteBatch()
        let payload = [UInt8](repeating: 7, count: 64 << 10)
        log.stage(
            entries: (36...140).map { Entry(term: 3, index: $0, data: payload + Array("\($0)".utf8)) },
            into: big
        )
        log.stage(hardState: HardState(term: 3, vote: 1, commit: 140), into: big)
        try database.write(big, sync: true)
        try check()
        let compact = WriteBatch()
        try log.stageCompaction(at: 100, confState: ConfState(voters: [1, 2, 3]), data: [], into: compact)
        try database.write(compact, sync: true)
        try check()
    }

    @Test func compactionFreesEntriesAndSurvivesReopening() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            let (database, family) = try open(path)
            let log = try RaftLogStore(database: database, family: family, group: 3)
            let batch = WriteBatch()
            try log.bootstrap(ConfState(voters: [1]), into: batch)
            log.stage(entries: entries(2...10, term: 2), into: batch)
            log.stage(hardState: HardState(term: 2, vote: 1, commit: 10), into: batch)
            try database.write(batch, sync: true)
            let compaction = WriteBatch()
            try log.stageCompaction(at: 8, confState: ConfState(voters: [1]), data: [42], into: compaction)
            try database.write(compaction, sync: true)
            expectRaftCode(.compacted) { _ = try log.entries(from: 5, to: 9, maxSize: .max) }
            #expect(throws: StorageError.self) {
                try log.stageCompaction(at: 8, confState: ConfState(voters: [1]), data: [], into: WriteBatch())
            }
        }
        let (database, family) = try open(path)
        let log = try RaftLogStore(database: database, family: family, group: 3)
        #expect(try log.firstIndex() == 9)
        #expect(try log.lastIndex() == 10)
        #expect(try log.snapshot().data == [42])
        #expect(try log.term(at: 8) == 2)
        let stored = try database.scan(in: family, from: [0x01], to: [0x02])
        #expect(stored.count == 2)
    }

    @Test func aCompactionWithoutDataAsksForSnapshotsAndServesWhatItIsOffered() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let confState = ConfState(voters: [1, 2])
        do {
            let (database, family) = try open(path)
            let log = try RaftLogStore(database: database, family: family, group: 3)
            var asked = 0
            log.snapshotNeeded = { asked += 1 }
            let batch = WriteBatch()
            try log.bootstrap(confState, data: [1], into: batch)
            log.stage(entries: entries(2...30, term: 2), into: batch)
            log.stage(hardState: HardState(term: 2, vote: 1, commit: 30), into: batch)
            try database.write(batch, sync: true)
            // Before any compaction the bootstrap snapshot (with its data) is served; nobody is asked.
            #expect(try log.snapshot().data == [1])
            let compaction = WriteBatch()
            try log.stageCompaction(at: 10, confState: confState, into: compaction)
            try database.write(compaction, sync: true)
            // The log keeps where it starts, no data: a snapshot must be made by the log's owner.
            let stored = try database.get(RaftLogKeys.snapshot(group: 3), in: family) ?? []
            #expect(stored.count < 40)
            expectRaftCode(.snapshotTemporarilyUnavailable) { _ = try log.snapshot() }
            #expect(asked == 1)
            // An offer older than the log's start, or beyond its last entry, is dropped.
            log.offer(Snapshot(data: [5], metadata: SnapshotMetadata(index: 9, term: 2, confState: confState)))
            log.offer(Snapshot(data: [5], metadata: SnapshotMetadata(index: 31, term: 2, confState: confState)))
            expectRaftCode(.snapshotTemporarilyUnavailable) { _ = try log.snapshot() }
            #expect(asked == 2)
            log.offer(Snapshot(data: [7], metadata: SnapshotMetadata(index: 25, term: 2, confState: confState)))
            #expect(try log.snapshot().data == [7])
            #expect(try log.snapshot().metadata.index == 25)
            // A newer offer replaces it; an older one does not.
            log.offer(Snapshot(data: [8], metadata: SnapshotMetadata(index: 28, term: 2, confState: confState)))
            log.offer(Snapshot(data: [6], metadata: SnapshotMetadata(index: 26, term: 2, confState: confState)))
            #expect(try log.snapshot().data == [8])
            // Compacting past it makes it useless: the log asks again.
            let later = WriteBatch()
            try log.stageCompaction(at: 29, confState: confState, into: later)
            try database.write(later, sync: true)
            expectRaftCode(.snapshotTemporarilyUnavailable) { _ = try log.snapshot() }
            #expect(asked == 3)
            #expect(try log.firstIndex() == 30)
            #expect(try log.term(at: 29) == 2)
        }
        // Reopened: it starts at the compaction and holds no data; without an owner to ask, it says where it
        // starts (what a node does with a log at open).
        let (database, family) = try open(path)
        let log = try RaftLogStore(database: database, family: family, group: 3)
        #expect(try log.firstIndex() == 30)
        #expect(try log.lastIndex() == 30)
        #expect(try log.snapshot().data.isEmpty)
        #expect(try log.snapshot().metadata.index == 29)
        #expect(try log.snapshot().metadata.confState == confState)
    }

    @Test func aSnapshotFromTheLeaderReplacesAnOfferedOne() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (database, family) = try open(path)
        let log = try RaftLogStore(database: database, family: family, group: 1)
        log.snapshotNeeded = {}
        let confState = ConfState(voters: [1, 2])
        let batch = WriteBatch()
        try log.bootstrap(confState, into: batch)
        log.stage(entries: entries(2...6, term: 2), into: batch)
        log.stage(hardState: HardState(term: 2, vote: 1, commit: 6), into: batch)
        try database.write(batch, sync: true)
        let compaction = WriteBatch()
        try log.stageCompaction(at: 5, confState: confState, into: compaction)
        try database.write(compaction, sync: true)
        log.offer(Snapshot(data: [7, 7, 7], metadata: SnapshotMetadata(index: 6, term: 2, confState: confState)))
        #expect(try log.snapshot().data == [7, 7, 7])
        let install = WriteBatch()
        log.stageSnapshot(
            Snapshot(data: [9], metadata: SnapshotMetadata(index: 20, term: 5, confState: confState)),
            into: install
        )
        try database.write(install, sync: true)
        #expect(try log.snapshot().data == [9])
        #expect(try log.snapshot().metadata.index == 20)
    }

    @Test func aSnapshotFromTheLeaderReplacesTheLog() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (database, family) = try open(path)
        let log = try RaftLogStore(database: database, family: family, group: 1)
        let batch = WriteBatch()
        try log.bootstrap(ConfState(voters: [1, 2]), into: batch)
        log.stage(entries: entries(2...4, term: 2), into: batch)
        try database.write(batch, sync: true)
        let install = WriteBatch()
        let snapshot = Snapshot(
            data: [1, 2],
            metadata: SnapshotMetadata(index: 20, term: 5, confState: ConfState(voters: [1, 2]))
        )
        log.stageSnapshot(snapshot, into: install)
        try database.write(install, sync: true)
        #expect(try log.firstIndex() == 21)
        #expect(try log.lastIndex() == 20)
        #expect(try database.scan(in: family, from: [0x01], to: [0x02]).isEmpty)
    }

    @Test func groupsSharingADatabaseAreIsolated() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (database, family) = try open(path)
        let a = try RaftLogStore(database: database, family: family, group: 1)
        let b = try RaftLogStore(database: database, family: family, group: 2)
        let batch = WriteBatch()
        try a.bootstrap(ConfState(voters: [1]), into: batch)
        try b.bootstrap(ConfState(voters: [1]), into: batch)
        a.stage(entries: entries(2...9, term: 2), into: batch)
        b.stage(entries: entries(2...3, term: 4), into: batch)
        try database.write(batch, sync: true)
        let reopenedA = try RaftLogStore(database: database, family: family, group: 1)
        let reopenedB = try RaftLogStore(database: database, family: family, group: 2)
        #expect(try reopenedA.lastIndex() == 9)
        #expect(try reopenedB.lastIndex() == 3)
        #expect(try reopenedB.term(at: 3) == 4)
    }

    @Test func aHoleInTheLogIsReportedAsCorruption() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (database, family) = try open(path)
        let log = try RaftLogStore(database: database, family: family, group: 1)
        let batch = WriteBatch()
        try log.bootstrap(ConfState(voters: [1]), into: batch)
        log.stage(entries: entries(2...5, term: 2), into: batch)
        try database.write(batch, sync: true)
        try database.delete(RaftLogKeys.entry(group: 1, index: 3), in: family, sync: true)
        do {
            _ = try RaftLogStore(database: database, family: family, group: 1)
            Issue.record("a log with a hole was loaded")
        } catch {
            #expect(error.code == .corruption)
        }
        try database.put(RaftLogKeys.entry(group: 1, index: 3), [0xFF, 0xFF], in: family, sync: true)
        do {
            _ = try RaftLogStore(database: database, family: family, group: 1)
            Issue.record("a log with a garbage record was loaded")
        } catch {
            #expect(error.code == .corruption)
        }
    }

    /// A single-voter RawNode over RocksDB: what it acknowledges is on disk and survives a restart.
    @Test func aOneVoterGroupRestartsWithEveryCommittedEntry() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        var appliedBeforeRestart: [[UInt8]] = []
        do {
            let (database, family) = try open(path)
            let log = try RaftLogStore(database: database, family: family, group: 1)
            let bootstrap = WriteBatch()
            try log.bootstrap(ConfState(voters: [1]), into: bootstrap)
            try database.write(bootstrap, sync: true)
            var node = try RawNode(config: Config(id: 1), storage: log)
            node.campaign()
            for round in 0..<20 {
                if round > 0 { try node.proposeBatch((0..<5).map { Array("m\(round)-\($0)".utf8) }) }
                while node.hasReady {
                    let ready = node.ready()
                    let batch = WriteBatch()
                    log.stage(ready, into: batch)
                    try database.write(batch, sync: ready.mustSync)
                    appliedBeforeRestart += ready.committedEntries.filter { !$0.data.isEmpty }.map(\.data)
                    node.advance(ready)
                }
            }
            #expect(appliedBeforeRestart.count == 95)
        }
        let (database, family) = try open(path)
        let log = try RaftLogStore(database: database, family: family, group: 1)
        var node = try RawNode(config: Config(id: 1), storage: log)
        var replayed: [[UInt8]] = []
        while node.hasReady {
            let ready = node.ready()
            replayed += ready.committedEntries.filter { !$0.data.isEmpty }.map(\.data)
            node.advance(ready)
        }
        #expect(replayed == appliedBeforeRestart)
        node.campaign()
        _ = node.ready()
        #expect(node.softState.role == .leader)
    }
}

func expectRaftCode(
    _ code: RaftError.Code,
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () throws -> Void
) {
    do {
        try body()
        Issue.record("expected \(code)", sourceLocation: sourceLocation)
    } catch let error as RaftError {
        #expect(error.code == code, sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected \(code), got \(error)", sourceLocation: sourceLocation)
    }
}
