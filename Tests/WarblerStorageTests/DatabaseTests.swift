import Foundation
import Synchronization
import Testing

@testable import WarblerStorage

/// A fresh directory under the system temporary directory, removed by the caller.
func temporaryDirectory(_ name: String = #function) -> String {
    let safe = name.filter { $0.isLetter || $0.isNumber }
    let path = NSTemporaryDirectory() + "warbler-storage-\(safe)-\(UUID().uuidString)"
    return path
}

func b(_ text: String) -> [UInt8] { Array(text.utf8) }

struct DatabaseTests {
    @Test func writesSurviveReopening() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            var options = Database.Options()
            options.columnFamilies = ["messages"]
            let database = try Database(path: path, options: options)
            let messages = try database.columnFamily("messages")
            try database.put(b("k1"), b("v1"), in: messages, sync: true)
            try database.put(b("k2"), b("v2"), in: database.defaultFamily, sync: true)
        }
        // Reopened without naming the family: families on disk are opened anyway.
        let database = try Database(path: path)
        #expect(database.columnFamilyNames == ["default", "messages"])
        #expect(try database.get(b("k1"), in: database.columnFamily("messages")) == b("v1"))
        #expect(try database.get(b("k2"), in: database.defaultFamily) == b("v2"))
        #expect(try database.get(b("missing"), in: database.defaultFamily) == nil)
    }

    @Test func emptyKeysAndValuesAreValid() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let database = try Database(path: path)
        try database.put([], [], in: database.defaultFamily, sync: false)
        #expect(try database.get([], in: database.defaultFamily) == [])
    }

    @Test func batchesApplyAtomically() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        var options = Database.Options()
        options.columnFamilies = ["a", "b"]
        let database = try Database(path: path, options: options)
        let a = try database.columnFamily("a")
        let family = try database.columnFamily("b")
        try database.put(b("gone"), b("x"), in: a, sync: false)
        let batch = WriteBatch()
        batch.put(b("1"), b("one"), in: a)
        batch.put(b("2"), b("two"), in: family)
        batch.delete(b("gone"), in: a)
        #expect(batch.count == 3)
        try database.write(batch, sync: true)
        #expect(try database.get(b("1"), in: a) == b("one"))
        #expect(try database.get(b("2"), in: family) == b("two"))
        #expect(try database.get(b("gone"), in: a) == nil)
    }

    @Test func iteratorsWalkInKeyOrderWithinBounds() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let database = try Database(path: path)
        let family = database.defaultFamily
        for key in ["c", "a", "e", "b", "d"] { try database.put(b(key), b(key.uppercased()), in: family, sync: false) }
        let all = try database.scan(in: family, from: [])
        #expect(all.map { String(decoding: $0.key, as: UTF8.self) } == ["a", "b", "c", "d", "e"])
        let bounded = try database.scan(in: family, from: b("b"), to: b("d"))
        #expect(bounded.map { String(decoding: $0.value, as: UTF8.self) } == ["B", "C"])
        #expect(try database.scan(in: family, from: b("a"), limit: 2).count == 2)
        let iterator = database.makeIterator(in: family)
        iterator.seekForPrevious(b("cc"))
        #expect(iterator.key == b("c"))
        iterator.previous()
        #expect(iterator.key == b("b"))
        iterator.seekToLast()
        #expect(iterator.key == b("e"))
        iterator.next()
        #expect(!iterator.isValid)
        try iterator.checkError()
    }

    @Test func deleteRangeRemovesAHalfOpenRange() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let database = try Database(path: path)
        let family = database.defaultFamily
        for key in ["a", "b", "c", "d"] { try database.put(b(key), b(key), in: family, sync: false) }
        let batch = WriteBatch()
        batch.deleteRange(from: b("b"), to: b("d"), in: family)
        try database.write(batch, sync: true)
        #expect(try database.scan(in: family, from: []).map(\.key) == [b("a"), b("d")])
    }

    @Test func snapshotsIgnoreLaterWrites() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let database = try Database(path: path)
        let family = database.defaultFamily
        try database.put(b("k"), b("old"), in: family, sync: false)
        let snapshot = database.makeSnapshot()
        try database.put(b("k"), b("new"), in: family, sync: false)
        try database.put(b("k2"), b("added"), in: family, sync: false)
        #expect(try database.get(b("k"), in: family, snapshot: snapshot) == b("old"))
        #expect(try database.scan(in: family, from: [], snapshot: snapshot).count == 1)
        #expect(try database.get(b("k"), in: family) == b("new"))
    }

    @Test func checkpointsOpenAsAnIndependentDatabase() throws {
        let path = temporaryDirectory()
        let copy = path + "-checkpoint"
        defer {
            try? FileManager.default.removeItem(atPath: path)
            try? FileManager.default.removeItem(atPath: copy)
        }
        let database = try Database(path: path)
        try database.put(b("k"), b("at checkpoint"), in: database.defaultFamily, sync: true)
        try database.checkpoint(to: copy)
        try database.put(b("k"), b("after"), in: database.defaultFamily, sync: true)
        let restored = try Database(path: copy)
        #expect(try restored.get(b("k"), in: restored.defaultFamily) == b("at checkpoint"))
    }

    @Test func aSecondOpenOfTheSameDatabaseIsLocked() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let database = try Database(path: path)
        do {
            _ = try Database(path: path)
            Issue.record("a second open succeeded")
        } catch {
            #expect(error.code == .locked, "\(error)")
        }
        _ = database
    }

    @Test func openingAMissingDatabaseWithoutCreateIsNotFound() throws {
        var options = Database.Options()
        options.createIfMissing = false
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            _ = try Database(path: path, options: options)
            Issue.record("opened a database that does not exist")
        } catch {
            #expect(error.code == .notFound, "\(error)")
        }
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test func unknownColumnFamiliesAreATypedError() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let database = try Database(path: path)
        #expect(throws: StorageError.self) { try database.columnFamily("nope") }
    }

    /// Each wrong field is refused, naming it: a 10-byte write buffer, a write-ahead log bound below one buffer,
    /// eight open table files.
    @Test(arguments: ["writeBufferSize", "maxTotalWALSize", "maxOpenFiles"])
    func invalidOptionsAreRefusedWithTheFieldNamed(field: String) {
        var options = Database.Options()
        switch field {
        case "writeBufferSize": options.writeBufferSize = 10
        case "maxTotalWALSize": options.maxTotalWALSize = options.writeBufferSize - 1
        default: options.maxOpenFiles = 8
        }
        do {
            try options.validate()
            Issue.record("accepted a wrong \(field)")
        } catch {
            #expect(error.message.contains(field))
        }
    }

    /// RocksDB's performance counters are on by default on every thread; a thread that turns them off stops
    /// counting (the Raft loops do, see `SerialLoop`).
    @Test func aThreadThatTurnsOffPerformanceCountersStopsCounting() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let database = try Database(path: path)
        let counts = Mutex<(before: UInt64, afterFirst: UInt64, afterSecond: UInt64)?>(nil)
        let thread = Thread {
            func writeKeys(_ round: Int) {
                let batch = WriteBatch()
                for index in 0..<200 {
                    batch.put(b("key-\(round)-\(index * 7919 % 200)"), b("v"), in: database.defaultFamily)
                }
                try? database.write(batch, sync: false)
            }
            let before = Database.keyComparisonsOnThisThread()
            writeKeys(1)
            let afterFirst = Database.keyComparisonsOnThisThread()
            Database.disablePerformanceCountersOnThisThread()
            writeKeys(2)
            counts.withLock { $0 = (before, afterFirst, Database.keyComparisonsOnThisThread()) }
        }
        thread.start()
        let deadline = Date().addingTimeInterval(10)
        while counts.withLock({ $0 == nil }) && Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
        let result = try #require(counts.withLock { $0 })
        #expect(result.afterFirst > result.before, "the first batch's memtable inserts compared keys")
        #expect(result.afterSecond == result.afterFirst, "nothing counted once the counters were off")
    }

    /// A family written once and then left alone must not pin every later write-ahead log file: past
    /// `maxTotalWALSize` it is flushed and the old files go (RocksDB's own bound here would be 4 × 3 × 4 MiB).
    @Test func aQuietColumnFamilyDoesNotKeepTheWriteAheadLogGrowing() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        var options = Database.Options()
        options.columnFamilies = ["busy", "quiet"]
        options.writeBufferSize = 1 << 20
        options.maxTotalWALSize = 2 << 20
        do {
            let database = try Database(path: path, options: options)
            let busy = try database.columnFamily("busy")
            let quiet = try database.columnFamily("quiet")
            try database.put(b("once"), b("kept"), in: quiet, sync: true)
            let value = [UInt8](repeating: 0x5A, count: 4096)
            for round in 0..<64 {
                let batch = WriteBatch()
                for index in 0..<64 { batch.put(b("key-\(round)-\(index)"), value, in: busy) }
                try database.write(batch, sync: false)
            }
            // 16 MiB went through the log; flushes run in the background, so wait for the old files to go.
            var logBytes = 0
            for _ in 0..<100 {
                let files = try FileManager.default.contentsOfDirectory(atPath: path).filter { $0.hasSuffix(".log") }
                // RocksDB may delete a file between the listing and the look at its size: it then counts as 0.
                logBytes = files.reduce(0) {
                    $0 + ((try? FileManager.default.attributesOfItem(atPath: path + "/" + $1)[.size] as? Int) ?? 0)
                }
                if logBytes <= 6 << 20 { break }
                Thread.sleep(forTimeInterval: 0.05)
            }
            #expect(logBytes <= 6 << 20, "\(logBytes) bytes of write-ahead log after 16 MiB of writes")
        }
        // The quiet family's write was flushed, not lost.
        let reopened = try Database(path: path, options: options)
        #expect(try reopened.get(b("once"), in: reopened.columnFamily("quiet")) == b("kept"))
    }

    /// Writes 2 MB of compressible values, flushes, and returns the SST files' bytes.
    func sstFiles(compression: Database.Compression) throws -> [Data] {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        var options = Database.Options()
        options.compression = compression
        let database = try Database(path: path, options: options)
        let value = [UInt8](repeating: 0x61, count: 4096)
        for index in 0..<500 { try database.put(b("key-\(index)"), value, in: database.defaultFamily, sync: false) }
        try database.flush()
        let files = try FileManager.default.contentsOfDirectory(atPath: path).filter { $0.hasSuffix(".sst") }
        return try files.map { try Data(contentsOf: URL(fileURLWithPath: path + "/" + $0)) }
    }

    @Test func sstFilesAreLZ4Compressed() throws {
        let compressed = try sstFiles(compression: .lz4)
        let plain = try sstFiles(compression: .none)
        #expect(!compressed.isEmpty)
        // Each SST file records its compression in its properties block.
        for file in compressed { #expect(file.range(of: Data("LZ4".utf8)) != nil) }
        let compressedSize = compressed.reduce(0) { $0 + $1.count }
        let plainSize = plain.reduce(0) { $0 + $1.count }
        #expect(plainSize > 500 * 4096)
        #expect(compressedSize < plainSize / 10, "LZ4 \(compressedSize) bytes, uncompressed \(plainSize)")
    }

    @Test func compactionFreesDeletedData() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        var options = Database.Options()
        options.compression = .none
        let database = try Database(path: path, options: options)
        let family = database.defaultFamily
        var random = SystemRandomNumberGenerator()
        for index in 0..<200 {
            let value = (0..<8192).map { _ in UInt8.random(in: 0...255, using: &random) }
            try database.put(b(String(format: "key-%04d", index)), value, in: family, sync: false)
        }
        try database.flush()
        let before = Int(database.property("rocksdb.total-sst-files-size", in: family) ?? "0") ?? 0
        let batch = WriteBatch()
        batch.deleteRange(from: b("key-"), to: b("key-9999"), in: family)
        try database.write(batch, sync: true)
        database.compactRange(in: family)
        let after = Int(database.property("rocksdb.total-sst-files-size", in: family) ?? "0") ?? 0
        #expect(before > 1_000_000)
        #expect(after < before / 10, "before \(before), after \(after)")
    }
}

struct LZ4BlockTests {
    @Test(arguments: [0, 1, 17, 4096, 1 << 20])
    func roundTrips(size: Int) throws {
        var random = SystemRandomNumberGenerator()
        let input = (0..<size).map { position in position % 7 == 0 ? UInt8.random(in: 0...255, using: &random) : 42 }
        let compressed = try LZ4Block.compress(input)
        #expect(try LZ4Block.decompress(compressed) == input)
        if size >= 4096 { #expect(compressed.count < size / 2) }
    }

    @Test func damagedInputIsATypedErrorNeverACrash() throws {
        var random = SystemRandomNumberGenerator()
        let valid = try LZ4Block.compress(Array(repeating: 7, count: 10_000) + (0..<1000).map { UInt8($0 % 251) })
        for _ in 0..<2000 {
            var damaged = valid
            switch Int.random(in: 0..<3, using: &random) {
            case 0:
                damaged[Int.random(in: 0..<damaged.count, using: &random)] ^= UInt8.random(in: 1...255, using: &random)
            case 1: damaged.removeLast(Int.random(in: 1..<damaged.count, using: &random))
            default:
                damaged = (0..<Int.random(in: 0..<64, using: &random)).map { _ in
                    UInt8.random(in: 0...255, using: &random)
                }
            }
            do {
                _ = try LZ4Block.decompress(damaged)
            } catch {
                #expect(error.code == .corruption)
            }
        }
    }
}
