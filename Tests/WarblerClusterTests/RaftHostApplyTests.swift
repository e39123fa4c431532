import Dispatch
import Foundation
import Logging
import Synchronization
import Testing
import WarblerCluster
import WarblerRaft
import WarblerStorage
import WarblerWire

/// A list-of-values state machine whose apply can be held shut for one group: every entry appends its data
/// under `group|index`, and the outcome is the number of values the group holds afterwards.
struct GatedListMachine: GroupStateMachine {
    typealias Outcome = UInt64

    let group: UInt32
    let database: Database
    let family: ColumnFamily
    let gate: Gate

    /// Holds appliers of the gated group until opened.
    final class Gate: Sendable {
        let gatedGroup: UInt32
        private let opened = Mutex(false)
        private let waiting = Mutex(0)

        init(gatedGroup: UInt32) { self.gatedGroup = gatedGroup }

        func open() { opened.withLock { $0 = true } }
        var waiters: Int { waiting.withLock { $0 } }

        func pass(_ group: UInt32) {
            guard group == gatedGroup else { return }
            waiting.withLock { $0 += 1 }
            while !opened.withLock({ $0 }) { usleep(1_000) }
            waiting.withLock { $0 -= 1 }
        }
    }

    var prefix: [UInt8] { withUnsafeBytes(of: group.bigEndian, Array.init) }
    var appliedKey: [UInt8] { prefix + [0x00] }

    func valueKey(_ index: UInt64) -> [UInt8] { prefix + [0x01] + withUnsafeBytes(of: index.bigEndian, Array.init) }

    func appliedIndex() throws(StorageError) -> UInt64 {
        guard let bytes = try database.get(appliedKey, in: family) else { return 0 }
        return bytes.reduce(0) { $0 << 8 | UInt64($1) }
    }

    func count() throws -> UInt64 {
        UInt64(try database.scan(in: family, from: prefix + [0x01], to: prefix + [0x02]).count)
    }

    func apply(_ entries: [Entry], into batch: WriteBatch) throws(StorageError) -> [UInt64] {
        gate.pass(group)
        var held = (try? count()) ?? 0
        var outcomes: [UInt64] = []
        for entry in entries {
            batch.put(valueKey(entry.index), entry.data, in: family)
            held += 1
            outcomes.append(held)
        }
        if let last = entries.last {
            batch.put(appliedKey, withUnsafeBytes(of: last.index.bigEndian, Array.init), in: family)
        }
        return outcomes
    }

    func snapshotState() throws(StorageError) -> [StateRecord] {
        try database.scan(in: family, from: prefix, to: prefix + [0x02]).map {
            StateRecord(key: Array($0.key[4...]), value: $0.value)
        }
    }

    func restore(_ records: [StateRecord], index: UInt64, into batch: WriteBatch) throws(StorageError) {
        destroy(into: batch)
        for record in records { batch.put(prefix + record.key, record.value, in: family) }
        batch.put(appliedKey, withUnsafeBytes(of: index.bigEndian, Array.init), in: family)
    }

    func destroy(into batch: WriteBatch) {
        batch.deleteRange(from: prefix, to: prefix + [0xFF], in: family)
    }

    static func encode(_ outcome: UInt64) -> [UInt8] { withUnsafeBytes(of: outcome.bigEndian, Array.init) }
    static func decodeOutcome(_ bytes: [UInt8]) throws -> UInt64 { bytes.reduce(0) { $0 << 8 | UInt64($1) } }
}

/// A one-node cluster with two partitions on RocksDB, driven by the real runtime, with group 1's apply gated.
final class GatedCluster: @unchecked Sendable {
    let path = NSTemporaryDirectory() + "warbler-apply-\(UUID().uuidString)"
    let gate = GatedListMachine.Gate(gatedGroup: 1)
    var database: Database!
    var host: RaftHost<GatedListMachine>!
    var state: ColumnFamily!

    init(bootstrap: Bool = true) throws {
        var options = Database.Options()
        options.columnFamilies = ["raft", "state", "cluster"]
        database = try Database(path: path, options: options)
        state = try database.columnFamily("state")
        if bootstrap {
            var node = NodeInfo()
            node.nodeID = 1
            _ = try RaftHost<GatedListMachine>.initializeCluster(
                database: database,
                raftFamily: try database.columnFamily("raft"),
                clusterFamily: try database.columnFamily("cluster"),
                node: node,
                partitionCount: 2,
                replicationFactor: 1
            )
        }
    }

    func start() throws {
        let database = self.database!
        let state = self.state!
        let gate = self.gate
        host = try RaftHost(
            nodeID: 1,
            database: database,
            raftFamily: try database.columnFamily("raft"),
            clusterFamily: try database.columnFamily("cluster"),
            transport: nil,
            logger: Logger(label: "test"),
            makeMachine: { GatedListMachine(group: $0, database: database, family: state, gate: gate) },
            onApplied: { _, _ in }
        )
        host.start()
    }

    func machine(_ group: UInt32) -> GatedListMachine {
        GatedListMachine(group: group, database: database, family: state, gate: gate)
    }

    deinit {
        gate.open()
        host?.stop()
        try? FileManager.default.removeItem(atPath: path)
    }
}

struct RaftHostApplyTests {
    @Test func aGroupWhoseApplyIsStuckDoesNotHoldUpAnotherGroup() async throws {
        let cluster = try GatedCluster()
        try cluster.start()
        let host = cluster.host!
        // Group 1's applier is stuck on its first batch; its proposals are committed but wait for their outcome.
        let stuck = (1...5).map { index in
            Task { try await host.propose(Array("stuck-\(index)".utf8), to: 1) }
        }
        var waited = 0
        while cluster.gate.waiters == 0 && waited < 5_000 {
            try await Task.sleep(for: .milliseconds(10))
            waited += 10
        }
        #expect(cluster.gate.waiters == 1, "group 1's apply never started")

        // Group 2 replicates, commits and applies meanwhile, round after round. (Were applies on the scheduler,
        // group 2 would wait for the watchdog to open the gate, and the time check below would fail.)
        let watchdog = Task {
            try await Task.sleep(for: .seconds(10))
            cluster.gate.open()
        }
        defer { watchdog.cancel() }
        let started = ContinuousClock.now
        for index in 1...20 {
            let outcome = try await host.propose(Array("free-\(index)".utf8), to: 2)
            #expect(outcome == UInt64(index))
        }
        #expect(ContinuousClock.now - started < .seconds(3))
        #expect(try cluster.machine(2).count() == 20)
        // Group 1's entries are in the log (committed), not in its state yet.
        #expect(try cluster.machine(1).count() == 0)
        let status = await host.status()
        let group1 = try #require(status.groups.first { $0.group == 1 })
        #expect(group1.commit > group1.applied)

        cluster.gate.open()
        var outcomes: [UInt64] = []
        for task in stuck { outcomes.append(try await task.value) }
        #expect(Set(outcomes) == Set(1...5), "each proposal gets its own outcome, in log order")
        #expect(try cluster.machine(1).count() == 5)
    }

    @Test func aSnapshotPersistedButNotInstalledIsInstalledWhenTheGroupOpens() async throws {
        let cluster = try GatedCluster()
        cluster.gate.open()
        let raft = try cluster.database.columnFamily("raft")
        // As if the node stopped after the scheduler synced a leader's snapshot, before the applier installed it.
        var records = Warbler_Peer_V1_GroupSnapshot()
        for index in UInt64(1)...3 {
            var record = Warbler_Peer_V1_KeyValue()
            record.key = Data([0x01] + withUnsafeBytes(of: index.bigEndian, Array.init))
            record.value = Data("from the snapshot \(index)".utf8)
            records.state.append(record)
        }
        let log = try RaftLogStore(database: cluster.database, family: raft, group: 1)
        let batch = WriteBatch()
        log.stageSnapshot(
            Snapshot(
                data: try records.serializedBytes(),
                metadata: SnapshotMetadata(index: 40, term: 2, confState: ConfState(voters: [1]))
            ),
            into: batch
        )
        log.stage(hardState: HardState(term: 2, vote: 1, commit: 40), into: batch)
        try cluster.database.write(batch, sync: true)
        #expect(try cluster.machine(1).appliedIndex() == 0)

        try cluster.start()
        #expect(try cluster.machine(1).appliedIndex() >= 40)
        #expect(try cluster.machine(1).count() == 3)
        // The group goes on from the snapshot: the next entry lands after it.
        let outcome = try await cluster.host.propose(Array("after".utf8), to: 1)
        #expect(outcome == 4)
    }
}
