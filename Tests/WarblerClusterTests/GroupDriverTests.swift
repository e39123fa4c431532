import Foundation
import Logging
import Synchronization
import Testing
import WarblerCluster
import WarblerRaft
import WarblerStorage

/// A state machine that appends each entry's bytes to a list stored under one key.
struct AppendLog: GroupStateMachine {
    let database: Database
    let family: ColumnFamily

    func appliedIndex() throws(StorageError) -> UInt64 {
        guard let bytes = try database.get([0], in: family) else { return 0 }
        return bytes.reduce(0) { $0 << 8 | UInt64($1) }
    }

    func apply(_ entries: [Entry], into batch: WriteBatch) throws(StorageError) -> [UInt64] {
        guard let last = entries.last else { return [] }
        for entry in entries {
            batch.put([1] + withUnsafeBytes(of: entry.index.bigEndian, Array.init), entry.data, in: family)
        }
        batch.put([0], withUnsafeBytes(of: last.index.bigEndian, Array.init), in: family)
        return entries.map(\.index)
    }
}

/// Values recorded from the driver's queue and read by the test.
final class Recorded<Value: Sendable>: Sendable {
    private let value: Mutex<Value>
    init(_ initial: Value) { value = Mutex(initial) }
    func update(_ body: (inout Value) -> Void) { value.withLock { body(&$0) } }
    var current: Value { value.withLock { $0 } }
}

final class DriverFixture: @unchecked Sendable {
    let path = NSTemporaryDirectory() + "warbler-driver-\(UUID().uuidString)"
    var database: Database!
    var driver: GroupDriver<AppendLog>!
    let appliedBatches = Recorded<[[UInt64]]>([])

    init() throws { try start() }

    deinit {
        driver?.stop()
        try? FileManager.default.removeItem(atPath: path)
    }

    func start() throws {
        var options = Database.Options()
        options.columnFamilies = ["raft", "state"]
        database = try Database(path: path, options: options)
        let log = try RaftLogStore(database: database, family: try database.columnFamily("raft"), group: 9)
        if log.isEmpty {
            let batch = WriteBatch()
            try log.bootstrap(ConfState(voters: [1]), into: batch)
            try database.write(batch, sync: true)
        }
        driver = try GroupDriver(
            group: 9,
            nodeID: 1,
            database: database,
            log: log,
            machine: AppendLog(database: database, family: try database.columnFamily("state")),
            logger: Logger(label: "test"),
            onApplied: { [appliedBatches] outcomes in appliedBatches.update { $0.append(outcomes) } }
        )
        driver.start()
    }

    func restart() throws {
        driver.stop()
        driver = nil
        database = nil
        try start()
    }
}

struct GroupDriverTests {
    @Test func proposalsAreAppliedInSubmissionOrderAndReportedInLogOrder() async throws {
        let fixture = try DriverFixture()
        let results = Recorded<[UInt64]>([])
        let done = Recorded(0)
        for value in 0..<200 {
            fixture.driver.submit(Array("v\(value)".utf8)) { result in
                if case .success(let index) = result { results.update { $0.append(index) } }
                done.update { $0 += 1 }
            }
        }
        while done.current < 200 { try await Task.sleep(nanoseconds: 5_000_000) }
        let indexes = results.current
        #expect(indexes.count == 200)
        #expect(indexes == indexes.sorted())
        // Every applied batch, in order, covers exactly the proposals.
        let applied = fixture.appliedBatches.current.flatMap { $0 }
        #expect(applied == indexes)
        #expect(fixture.driver.statistics.appliedEntries == 200)
        #expect(fixture.driver.statistics.syncedBatches < 200)
    }

    @Test func theGroupResumesAfterARestartWithoutReapplying() async throws {
        let fixture = try DriverFixture()
        for value in 0..<10 { _ = try await fixture.driver.propose(Array("a\(value)".utf8)) }
        try fixture.restart()
        let index = try await fixture.driver.propose(Array("after".utf8))
        // Bootstrap at 1, the first leader's no-op at 2, ten entries at 3…12, the restarted leader's no-op at 13.
        #expect(index == 14)
        // Nothing was applied twice: the state holds exactly the eleven values.
        let stored = try fixture.database.scan(in: try fixture.database.columnFamily("state"), from: [1], to: [2])
        #expect(stored.count == 11)
    }

    @Test func aStoppedDriverFailsProposals() async throws {
        let fixture = try DriverFixture()
        fixture.driver.stop()
        await #expect(throws: GroupDriverError.self) { _ = try await fixture.driver.propose([1]) }
    }
}
