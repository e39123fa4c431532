import Dispatch
import Foundation
import Logging
import Synchronization
import Testing
import WarblerRaft
import WarblerStorage
import WarblerWire

@testable import WarblerCluster

/// A list-of-values state machine whose apply (or snapshot) can be held shut for one group: every entry appends
/// its data under `group|index`, and the outcome is the number of values the group holds afterwards.
struct GatedListMachine: GroupStateMachine {
    typealias Outcome = UInt64

    let group: UInt32
    let database: Database
    let family: ColumnFamily
    let gate: Gate

    /// Holds the gated group's apply, or its snapshots, until opened.
    final class Gate: Sendable {
        enum Work: Sendable { case apply, snapshot }
        let gatedGroup: UInt32
        let gatedWork: Work
        private let opened = Mutex(false)
        private let waiting = Mutex(0)

        init(gatedGroup: UInt32, work: Work) {
            self.gatedGroup = gatedGroup
            self.gatedWork = work
        }

        private let released = Mutex<Set<[UInt8]>>([])

        /// Opens the gate, and releases every hold.
        func open() { opened.withLock { $0 = true } }
        var waiters: Int { waiting.withLock { $0 } }

        /// Lets applies that hold `marker` go on.
        func release(_ marker: String) { _ = released.withLock { $0.insert(Array(marker.utf8)) } }

        func pass(_ group: UInt32, _ work: Work) {
            guard group == gatedGroup, work == gatedWork else { return }
            wait { opened.withLock { $0 } }
        }

        /// An apply of any group whose entries include one whose data starts with "hold-" waits until that data
        /// is released (or the gate opened).
        func pass(_ entries: [Entry]) {
            for entry in entries where entry.data.starts(with: Array("hold-".utf8)) {
                wait { opened.withLock { $0 } || released.withLock { $0.contains(entry.data) } }
            }
        }

        private func wait(until done: () -> Bool) {
            waiting.withLock { $0 += 1 }
            while !done() { usleep(1_000) }
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
        gate.pass(group, .apply)
        gate.pass(entries)
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

    func snapshotState(reading: ReadSnapshot) throws(StorageError) -> [StateRecord] {
        gate.pass(group, .snapshot)
        return try database.scan(in: family, from: prefix, to: prefix + [0x02], snapshot: reading).map {
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

/// A one-node cluster with two partitions on RocksDB, driven by the real runtime, with group 1's work gated.
final class GatedCluster: @unchecked Sendable {
    let path = NSTemporaryDirectory() + "warbler-apply-\(UUID().uuidString)"
    let gate: GatedListMachine.Gate
    var database: Database!
    var host: RaftHost<GatedListMachine>!
    var state: ColumnFamily!

    init(gating work: GatedListMachine.Gate.Work = .apply) throws {
        gate = GatedListMachine.Gate(gatedGroup: 1, work: work)
        var options = Database.Options()
        options.columnFamilies = ["raft", "state", "cluster"]
        database = try Database(path: path, options: options)
        state = try database.columnFamily("state")
        do {
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

    /// Starts the host with the default options changed by `configure`.
    func start(_ configure: (inout RaftHost<GatedListMachine>.Options) -> Void) throws {
        var options = RaftHost<GatedListMachine>.Options()
        configure(&options)
        try start(options: options)
    }

    func start(options: RaftHost<GatedListMachine>.Options = .init()) throws {
        let database = self.database!
        let state = self.state!
        let gate = self.gate
        host = try RaftHost(
            nodeID: 1,
            database: database,
            raftFamily: try database.columnFamily("raft"),
            clusterFamily: try database.columnFamily("cluster"),
            transport: nil,
            options: options,
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

/// A count that tasks add to.
final class Count: Sendable { let value = Mutex(0) }

struct RaftHostApplyTests {
    /// Waits until `condition` holds (up to 20 s: the suite runs beside CPU-bound simulations).
    func eventually(_ condition: () async throws -> Bool) async throws -> Bool {
        for _ in 0..<2_000 {
            if try await condition() { return true }
            try await Task.sleep(for: .milliseconds(10))
        }
        return false
    }

    /// Runs `body` on the host's scheduler and returns what it returns.
    func onScheduler<T: Sendable>(
        _ host: RaftHost<GatedListMachine>,
        _ body: @escaping @Sendable () -> T
    ) async -> T {
        await withCheckedContinuation { continuation in host.enqueue { continuation.resume(returning: body()) } }
    }

    @Test func compactionDropsAppliedEntriesWithoutCopyingTheState() async throws {
        // Snapshots are held shut: a compaction that copied the state would get stuck on them.
        let cluster = try GatedCluster(gating: .snapshot)
        var options = RaftHost<GatedListMachine>.Options()
        options.compactionEntries = 5
        try cluster.start(options: options)
        for index in 1...12 { _ = try await cluster.host.propose(Array("value-\(index)".utf8), to: 1) }
        let raft = try cluster.database.columnFamily("raft")
        #expect(
            try await eventually {
                try RaftLogStore(database: cluster.database, family: raft, group: 1).firstIndex() > 10
            },
            "group 1's log was never compacted"
        )
        #expect(cluster.gate.waiters == 0, "a compaction read the state")
        // The stored log starts past the dropped entries and holds no copy of the state.
        let stored = try RaftLogStore(database: cluster.database, family: raft, group: 1)
        #expect(try stored.snapshot().data.isEmpty)
        // After a restart the group goes on from its stored state (nothing replays twice, nothing is missing).
        cluster.host.stop()
        try cluster.start(options: options)
        #expect(try await cluster.host.propose(Array("after the restart".utf8), to: 1) == 13)
        #expect(try cluster.machine(1).count() == 13)
    }

    @Test func aSnapshotForAFollowerIsMadeOffTheSchedulerAndServedOnceMade() async throws {
        let cluster = try GatedCluster(gating: .snapshot)
        try cluster.start { $0.compactionEntries = 5 }
        let host = cluster.host!
        for index in 1...6 { _ = try await host.propose(Array("before-\(index)".utf8), to: 1) }
        let raft = try cluster.database.columnFamily("raft")
        #expect(
            try await eventually {
                try RaftLogStore(database: cluster.database, family: raft, group: 1).firstIndex() > 5
            },
            "group 1's log was never compacted"
        )
        // Raft asks for a snapshot (a follower needs compacted entries): the log has none and asks the host.
        let first = await onScheduler(host) { (try? host.groups[1]!.log.snapshot()) == nil }
        #expect(first, "a compacted log served a snapshot it does not have")
        #expect(try await eventually { cluster.gate.waiters == 1 }, "no snapshot was started")
        // It is made on the pool: both groups go on committing and applying meanwhile.
        let watchdog = Task {
            try await Task.sleep(for: .seconds(30))
            cluster.gate.open()
        }
        defer { watchdog.cancel() }
        for index in 1...10 {
            #expect(try await host.propose(Array("free-\(index)".utf8), to: 2) == UInt64(index))
            #expect(try await host.propose(Array("after-\(index)".utf8), to: 1) == UInt64(6 + index))
        }
        #expect(cluster.gate.waiters == 1, "the proposals needed the snapshot to be made")
        cluster.gate.open()
        // Once made, the log serves it: the state as of the index it was requested at (six values, at least).
        #expect(
            try await eventually {
                await onScheduler(host) { (try? host.groups[1]!.log.snapshot())?.data.isEmpty == false }
            },
            "the snapshot was never served"
        )
        let served = await onScheduler(host) { try? host.groups[1]!.log.snapshot() }
        let state = try Warbler_Peer_V1_GroupSnapshot(serializedBytes: served?.data ?? [])
        let values = state.state.filter { $0.key.first == 0x01 }
        #expect(values.count >= 6)
        #expect(served?.metadata.index ?? 0 >= 7)
        #expect(
            values.map { String(decoding: $0.value, as: UTF8.self) }.prefix(6)
                == ArraySlice((1...6).map { "before-\($0)" })
        )
    }

    @Test func aLeaderKeepsTheEntriesMembersThatAreCatchingUpNeed() {
        typealias Host = RaftHost<GatedListMachine>
        // No members (a follower, or one voter): everything applied goes.
        #expect(Host.compactionIndex(applied: 50_000, members: [], hold: nil, retained: 100_000) == (50_000, false))
        // An active member that lags keeps the entries after its match; an inactive one keeps nothing.
        let lagging = [(match: UInt64(40_000), active: true), (match: UInt64(10_000), active: false)]
        #expect(
            Host.compactionIndex(applied: 50_000, members: lagging, hold: nil, retained: 100_000) == (40_000, false)
        )
        // While a snapshot for a member is made, sent and stored, the entries after it and after the lowest match
        // of the lagging members stay, even when that member does not answer meanwhile.
        let storing = [(match: UInt64(50_000), active: true), (match: UInt64(10_000), active: false)]
        #expect(
            Host.compactionIndex(applied: 50_000, members: storing, hold: 30_000, retained: 100_000) == (30_000, true)
        )
        // Once it stored the snapshot it goes on from the log: what follows its match stays.
        let after = [(match: UInt64(50_000), active: true), (match: UInt64(35_000), active: false)]
        #expect(
            Host.compactionIndex(applied: 50_000, members: after, hold: 30_000, retained: 100_000) == (35_000, true)
        )
        // Caught up: the hold ends.
        let caughtUp = [(match: UInt64(50_000), active: true), (match: UInt64(50_000), active: true)]
        #expect(
            Host.compactionIndex(applied: 50_000, members: caughtUp, hold: 30_000, retained: 100_000) == (50_000, false)
        )
        // A member counts as active while it answered lately or is being streamed entries (busy applying a
        // catch-up, it can be silent for longer than an election timeout); not one that is being probed.
        #expect(Host.keepsEntries(recentlyActive: false, state: .replicate))
        #expect(Host.keepsEntries(recentlyActive: true, state: .probe))
        #expect(!Host.keepsEntries(recentlyActive: false, state: .probe))
        #expect(!Host.keepsEntries(recentlyActive: false, state: .snapshot))
        // Nobody keeps more than `retained` entries.
        #expect(
            Host.compactionIndex(applied: 250_000, members: storing, hold: 30_000, retained: 100_000) == (150_000, true)
        )
    }

    @Test func theSchedulerLooksAtTheGroupsItDroveWithoutWaitingForATick() async throws {
        // A round looks only at the groups driven since the last one (and at every group once a tick). Ticks are
        // an hour apart here: were a proposal, an election or a read not noted, it would wait for a tick and fail.
        let cluster = try GatedCluster(gating: .apply)
        cluster.gate.open()
        try cluster.start { $0.tickInterval = .seconds(3_600) }
        let host = cluster.host!
        // Nothing here would time out by itself (a proposal waits for its commit): the test waits at most 20 s.
        let answered = Count()
        for index in 1...5 {
            for group: UInt32 in [1, 2] {
                Task {
                    _ = try await host.propose(Array("\(group)-\(index)".utf8), to: group)
                    answered.value.withLock { $0 += 1 }
                }
            }
        }
        #expect(try await eventually { answered.value.withLock { $0 } == 10 }, "a proposal waited for a tick")
        Task {
            try await host.readBarrier(group: 1)
            answered.value.withLock { $0 += 1 }
        }
        #expect(try await eventually { answered.value.withLock { $0 } == 11 }, "a read waited for a tick")
        #expect(try cluster.machine(1).count() == 5)
        #expect(try cluster.machine(2).count() == 5)
    }

    @Test func aRoundIsWrittenAndAnsweredInBatchesOfAtMostTheChunkSize() async throws {
        // Only the holds stop applies here (group 1's snapshots are gated, and no snapshot is made).
        let cluster = try GatedCluster(gating: .snapshot)
        try cluster.start {
            $0.applyChunkEntries = 4
            // Proposals wait for the round being applied (however long): the held ones make one round.
            $0.proposalWindow = .seconds(3_600)
        }
        let host = cluster.host!
        func held() -> Int { host.inbox.withLock { $0.proposals.count } }
        let first = Task { try await host.propose(Array("hold-1".utf8), to: 1) }
        #expect(try await eventually { cluster.gate.waiters == 1 }, "the first round's apply never started")
        let answered = Count()
        for index in 1...4 {
            Task {
                _ = try await host.propose(Array("early-\(index)".utf8), to: 1)
                answered.value.withLock { $0 += 1 }
            }
        }
        #expect(try await eventually { held() == 4 })
        let last = Task { try await host.propose(Array("hold-2".utf8), to: 1) }
        #expect(try await eventually { held() == 5 })
        cluster.gate.release("hold-1")
        #expect(try await first.value == 1)
        // The second round is [early ×4, hold-2]: its first four entries are written and answered while the
        // fifth is still being applied. Applied as one batch, none would be answered before hold-2 is released.
        #expect(
            try await eventually { answered.value.withLock { $0 } == 4 },
            "the round's first batch was not answered before the rest was applied"
        )
        #expect(cluster.gate.waiters == 1, "hold-2 was applied with the first batch")
        #expect(try cluster.machine(1).count() == 5)
        cluster.gate.release("hold-2")
        #expect(try await last.value == 6)
        #expect(try cluster.machine(1).count() == 6)
    }

    @Test func anApplyJobSplitsIntoPiecesInOrder() {
        typealias Job = RaftHost<GatedListMachine>.ApplyJob
        let entries = (1...10).map { Entry(term: 1, index: UInt64($0), kind: .normal, data: [0]) }
        var waiters: [UInt64: RaftHost<GatedListMachine>.Waiter] = [:]
        for index: UInt64 in [2, 5, 9] { waiters[index] = { _ in } }
        let snapshot = Snapshot(data: [1], metadata: SnapshotMetadata(index: 0, term: 1, confState: ConfState()))
        var job = Job(snapshot: snapshot, entries: entries, waiters: waiters)
        job.makesSnapshot = true
        let pieces = job.pieces(of: 4)
        #expect(pieces.map { $0.entries.map(\.index) } == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]])
        #expect(pieces.map { $0.waiters.keys.sorted() } == [[2], [5], [9]])
        #expect(pieces.map { $0.snapshot != nil } == [true, false, false])
        #expect(pieces.map(\.makesSnapshot) == [false, false, true])
        #expect(job.pieces(of: 10).count == 1)
    }

    @Test func aStuckApplyHoldsUpNoGroupsReplication() async throws {
        let cluster = try GatedCluster(gating: .apply)
        try cluster.start()
        let host = cluster.host!
        func commit(_ group: UInt32) async -> UInt64 {
            await host.status().groups.first { $0.group == group }?.commit ?? 0
        }
        let startCommit = await commit(2)
        // Group 1's apply gets stuck on the apply queue.
        let stuck = Task { try await host.propose(Array("stuck".utf8), to: 1) }
        #expect(try await eventually { cluster.gate.waiters == 1 }, "group 1's apply never started")
        // Group 2 goes on appending, persisting and committing (the scheduler never waits for an apply); its
        // outcomes follow once the apply queue is free again. Were the apply on the scheduler, nothing would move
        // (not even the status query) until the watchdog opened the gate, and the gate would no longer hold.
        let watchdog = Task {
            try await Task.sleep(for: .seconds(30))
            cluster.gate.open()
        }
        defer { watchdog.cancel() }
        let proposals = (1...20).map { index in Task { try await host.propose(Array("free-\(index)".utf8), to: 2) } }
        #expect(
            try await eventually { await commit(2) >= startCommit + 20 },
            "group 2 committed nothing while group 1's apply was stuck"
        )
        #expect(cluster.gate.waiters == 1, "the gate was opened early")
        #expect(try cluster.machine(2).count() == 0, "group 2 was applied past the stuck apply")
        cluster.gate.open()
        #expect(try await stuck.value == 1)
        var outcomes: [UInt64] = []
        for proposal in proposals { outcomes.append(try await proposal.value) }
        #expect(outcomes.sorted() == Array(1...20))
        #expect(try cluster.machine(2).count() == 20)
    }

    @Test func aReadOfAGroupThisNodeDoesNotReplicateWaitsForItsReplicaThenFails() async throws {
        let cluster = try GatedCluster(gating: .apply)
        cluster.gate.open()
        try cluster.start { $0.requestTimeout = .seconds(1) }
        // A replicated group answers; one that no leader creates here waits for its replica until the deadline.
        try await cluster.host.readBarrier(group: 1)
        let started = ContinuousClock.now
        await #expect {
            try await cluster.host.readBarrier(group: 9)
        } throws: { error in
            (error as? ClusterError)?.code == .unavailable
        }
        #expect(ContinuousClock.now - started >= .milliseconds(900), "the read did not wait for the replica")
    }

    @Test func aSnapshotPersistedButNotInstalledIsInstalledWhenTheGroupOpens() async throws {
        let cluster = try GatedCluster(gating: .apply)
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
