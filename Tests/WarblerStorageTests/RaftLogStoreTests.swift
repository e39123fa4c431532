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

    @Test func aCompactionSnapshotKeptInAFileIsReadBackCheckedAndReplaced() throws {
        let path = temporaryDirectory()
        defer {
            try? FileManager.default.removeItem(atPath: path)
            try? FileManager.default.removeItem(atPath: path + "-snapshots")
        }
        let files = SnapshotFiles(besideDatabaseAt: path)
        let data = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        do {
            let (database, family) = try open(path)
            let log = try RaftLogStore(database: database, family: family, group: 3, snapshotFiles: files)
            let batch = WriteBatch()
            try log.bootstrap(ConfState(voters: [1]), into: batch)
            log.stage(entries: entries(2...10, term: 2), into: batch)
            log.stage(hardState: HardState(term: 2, vote: 1, commit: 10), into: batch)
            try database.write(batch, sync: true)
            // A file that does not hold the data at the index is refused.
            let wrong = try files.write(Array(data.prefix(10)), group: 3, index: 8)
            #expect(throws: StorageError.self) {
                try log.stageCompaction(
                    at: 8,
                    confState: ConfState(voters: [1]),
                    data: data,
                    file: wrong,
                    into: WriteBatch()
                )
            }
            let file = try files.write(data, group: 3, index: 8)
            let compaction = WriteBatch()
            try log.stageCompaction(at: 8, confState: ConfState(voters: [1]), data: data, file: file, into: compaction)
            try database.write(compaction, sync: true)
            #expect(try log.snapshot().data == data)
            // The log stores the reference, not the data.
            let stored = try database.get(RaftLogKeys.snapshot(group: 3), in: family) ?? []
            #expect(stored.count < 100)
        }
        do {
            let (database, family) = try open(path)
            let log = try RaftLogStore(database: database, family: family, group: 3, snapshotFiles: files)
            #expect(try log.snapshot().data == data)
            #expect(try log.snapshot().metadata.index == 8)
            #expect(log.snapshotFile?.index == 8)
            #expect(try log.firstIndex() == 9)
            // Without the directory the log cannot be opened: it says so rather than losing the data.
            #expect(throws: StorageError.self) { _ = try RaftLogStore(database: database, family: family, group: 3) }
        }
        // An altered file is corruption, and so is a missing one.
        let name = files.directory + "/3-8.snap"
        var altered = try [UInt8](Data(contentsOf: URL(fileURLWithPath: name)))
        altered[500] ^= 0xFF
        try Data(altered).write(to: URL(fileURLWithPath: name))
        do {
            let (database, family) = try open(path)
            #expect {
                _ = try RaftLogStore(database: database, family: family, group: 3, snapshotFiles: files)
            } throws: { ($0 as? StorageError)?.code == .corruption }
            try FileManager.default.removeItem(atPath: name)
            #expect {
                _ = try RaftLogStore(database: database, family: family, group: 3, snapshotFiles: files)
            } throws: { ($0 as? StorageError)?.code == .corruption }
        }
        // Cleaning up keeps the named file and later ones, removes older ones and other groups' files.
        _ = try files.write([1], group: 3, index: 4)
        _ = try files.write([2], group: 3, index: 9)
        _ = try files.write([3], group: 4, index: 9)
        files.removeFiles(of: 3, before: 9)
        #expect(!FileManager.default.fileExists(atPath: files.directory + "/3-4.snap"))
        #expect(FileManager.default.fileExists(atPath: files.directory + "/3-9.snap"))
        files.removeFiles(keeping: [3: 9])
        #expect(!FileManager.default.fileExists(atPath: files.directory + "/4-9.snap"))
        files.removeFiles(of: 3, before: .max)
        #expect(try FileManager.default.contentsOfDirectory(atPath: files.directory).isEmpty)
    }

    @Test func aSnapshotFromTheLeaderReplacesAFileReference() throws {
        let path = temporaryDirectory()
        defer {
            try? FileManager.default.removeItem(atPath: path)
            try? FileManager.default.removeItem(atPath: path + "-snapshots")
        }
        let files = SnapshotFiles(besideDatabaseAt: path)
        do {
            let (database, family) = try open(path)
            let log = try RaftLogStore(database: database, family: family, group: 1, snapshotFiles: files)
            let batch = WriteBatch()
            try log.bootstrap(ConfState(voters: [1, 2]), into: batch)
            log.stage(entries: entries(2...6, term: 2), into: batch)
            log.stage(hardState: HardState(term: 2, vote: 1, commit: 6), into: batch)
            try database.write(batch, sync: true)
            let compaction = WriteBatch()
            let file = try files.write([7, 7, 7], group: 1, index: 5)
            try log.stageCompaction(
                at: 5,
                confState: ConfState(voters: [1, 2]),
                data: [7, 7, 7],
                file: file,
                into: compaction
            )
            try database.write(compaction, sync: true)
            let install = WriteBatch()
            log.stageSnapshot(
                Snapshot(
                    data: [9],
                    metadata: SnapshotMetadata(index: 20, term: 5, confState: ConfState(voters: [1, 2]))
                ),
                into: install
            )
            try database.write(install, sync: true)
            #expect(log.snapshotFile == nil)
        }
        let (database, family) = try open(path)
        let log = try RaftLogStore(database: database, family: family, group: 1, snapshotFiles: files)
        #expect(try log.snapshot().data == [9])
        #expect(log.snapshotFile == nil)
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
