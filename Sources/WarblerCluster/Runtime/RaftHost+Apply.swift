import Dispatch
import Foundation
import Logging
import Synchronization
import WarblerRaft
import WarblerStorage
import WarblerWire

// Applying committed entries, off the scheduler: on the apply queue, and every group has its own applier.
extension RaftHost {
    typealias ReadCompletion = @Sendable (Result<Void, any Error>) -> Void

    /// What a scheduling round hands to a group's applier once the round's batch is on disk: a snapshot to
    /// install first (when the round received one), the committed entries in index order, and the proposers
    /// waiting for their outcomes. Or a request to make a snapshot of the applied state for a follower.
    struct ApplyJob: Sendable {
        var snapshot: Snapshot?
        var entries: [Entry]
        var waiters: [UInt64: Waiter]
        var makesSnapshot = false

        /// This job as jobs of at most `limit` entries each, in order: the snapshot to install goes with the
        /// first, the request for a snapshot with the last, each proposer with its entry.
        func pieces(of limit: Int) -> [ApplyJob] {
            guard entries.count > limit, limit > 0 else { return [self] }
            var pieces: [ApplyJob] = []
            var start = 0
            while start < entries.count {
                let end = min(start + limit, entries.count)
                let slice = Array(entries[start..<end])
                var piece = ApplyJob(snapshot: start == 0 ? snapshot : nil, entries: slice, waiters: [:])
                for entry in slice {
                    if let waiter = waiters[entry.index] { piece.waiters[entry.index] = waiter }
                }
                piece.makesSnapshot = end == entries.count && makesSnapshot
                pieces.append(piece)
                start = end
            }
            return pieces
        }
    }

    /// Applies one group's committed entries to its state machine, in index order: on the node's apply queue
    /// (with every other group's entries of the round, in one batch), or — for heavy work (a snapshot to
    /// install, a large catch-up), and for every job of the group that follows it until that is done — on the
    /// group's own serial queue, in its own batch. Snapshots for followers are read from a RocksDB snapshot on
    /// the pool while the group goes on. The two queues never run one group's jobs at once, so its state here
    /// needs no lock.
    ///
    /// A detached job writes the state its entries produce, the applied membership (`0x04|group`) and, for the
    /// metadata group, the cluster records, without fsync. That is safe because the scheduler wrote (and
    /// synced) the entries before handing them over: RocksDB's write-ahead log is replayed in order, so a crash
    /// can lose a suffix of applied state but never keep state whose entries it lost; on restart the group
    /// replays its committed entries from the stored applied index, and a snapshot persisted but not yet
    /// installed is installed when the group opens (``RaftHost/recover(_:log:machine:)``).
    final class Applier: @unchecked Sendable {
        let id: UInt32
        let machine: Machine
        let queue: DispatchQueue
        weak var host: RaftHost?

        // Confined to the apply queue, or to `queue` while `detached` is above zero.
        private var confState: ConfState
        /// The term of the entry at the applied index (a snapshot of the state carries it).
        private var appliedTerm: UInt64
        private var compactedThrough: UInt64
        /// The metadata group's view of the cluster as of its applied index (group 0 only).
        private var view: ClusterView
        private var failure: (any Error)?

        /// The applied index, and the linearizable reads waiting for it (shared with the scheduler).
        private let progress: Mutex<(applied: UInt64, reads: [(index: UInt64, completion: ReadCompletion)])>

        init(
            id: UInt32,
            machine: Machine,
            confState: ConfState,
            applied: UInt64,
            appliedTerm: UInt64,
            compactedThrough: UInt64,
            view: ClusterView,
            pool: DispatchQueue
        ) {
            self.id = id
            self.machine = machine
            self.confState = confState
            self.appliedTerm = appliedTerm
            self.compactedThrough = compactedThrough
            self.view = view
            queue = DispatchQueue(label: "warbler.apply.\(id)", target: pool)
            progress = Mutex((applied, []))
        }

        /// The index up to which the state machine's effects are written.
        var appliedIndex: UInt64 { progress.withLock { $0.applied } }

        /// True while a read waits for this replica to apply its read index.
        var hasPendingReads: Bool { progress.withLock { !$0.reads.isEmpty } }

        /// Calls `completion` once everything up to `index` is applied (at once when it already is).
        func whenApplied(_ index: UInt64, _ completion: @escaping ReadCompletion) {
            let now = progress.withLock { progress -> Bool in
                if progress.applied >= index { return true }
                progress.reads.append((index, completion))
                return false
            }
            if now { completion(.success(())) }
        }

        /// Fails every read waiting for this replica.
        func failReads(_ error: any Error) {
            let reads = progress.withLock { progress in
                defer { progress.reads = [] }
                return progress.reads
            }
            for read in reads { read.completion(.failure(error)) }
        }

        /// The result of staging one job, until its batch is written.
        struct Staged {
            var job: ApplyJob
            var results: [UInt64: AppliedResult] = [:]
            var outcomes: [Machine.Outcome] = []
            /// The applied index and its term once the job is written.
            var last: UInt64
            var term: UInt64
            var viewChanged = false
        }

        /// Jobs handed to this group's own queue and not finished: while any are, the group's later jobs go
        /// there too (their order is the log's).
        let detached = Atomic<Int>(0)

        /// A job with a snapshot to install, or many entries (more than 1,024, or more than 4 MiB of them), runs on
        /// the group's own queue.
        static func isHeavy(_ job: ApplyJob) -> Bool {
            guard job.snapshot == nil, job.entries.count <= 1_024 else { return true }
            var bytes = 0
            for entry in job.entries {
                bytes += entry.data.count
                if bytes > 4 << 20 { return true }
            }
            return false
        }

        /// True while heavy work (or a job behind it) runs on the group's own queue.
        var isDetached: Bool { detached.load(ordering: .sequentiallyConsistent) > 0 }

        /// Runs `job` on this group's own queue, in its own batch (called on the apply queue, once the job's
        /// entries are on disk).
        func detach(_ job: ApplyJob) {
            detached.add(1, ordering: .sequentiallyConsistent)
            queue.async {
                defer { self.detached.subtract(1, ordering: .sequentiallyConsistent) }
                guard let host = self.host else {
                    return Self.fail(job, ClusterError(.stopped, "the node is stopping"))
                }
                let batch = WriteBatch()
                guard let staged = self.stage(job, into: batch, host: host) else { return }
                host.write(batch, [(self, staged)])
            }
        }

        /// Stages `job` into `batch`; nil (and the job failed) when this applier already failed or staging did.
        func stage(_ job: ApplyJob, into batch: WriteBatch, host: RaftHost) -> Staged? {
            if let failure {
                Self.fail(job, failure)
                return nil
            }
            var staged = Staged(job: job, last: appliedIndex, term: appliedTerm)
            var confChanged = false
            do {
                if let snapshot = job.snapshot {
                    try install(snapshot, into: batch, host: host)
                    staged.viewChanged = id == 0
                    confChanged = true
                    if snapshot.metadata.index > staged.last {
                        staged.last = snapshot.metadata.index
                        staged.term = snapshot.metadata.term
                    }
                }
                var application: [Entry] = []
                for entry in job.entries {
                    if entry.index > staged.last {
                        staged.last = entry.index
                        staged.term = entry.term
                    }
                    switch entry.kind {
                    case .confChange:
                        guard let change = try? ConfChange(decoding: entry.data) else { continue }
                        confState.apply(change)
                        confChanged = true
                    case .normal where entry.data.first == RaftHost.clusterTag:
                        guard id == 0, let command = try? ClusterCommand(serializedBytes: Array(entry.data[1...]))
                        else {
                            staged.results[entry.index] = .cluster("not a cluster command")
                            continue
                        }
                        staged.results[entry.index] = .cluster(
                            view.apply(command, into: batch, family: host.clusterFamily)
                        )
                        staged.viewChanged = true
                    case .normal where !entry.data.isEmpty:
                        application.append(
                            Entry(term: entry.term, index: entry.index, kind: .normal, data: Array(entry.data[1...]))
                        )
                    case .normal:
                        continue
                    }
                }
                staged.outcomes = try machine.apply(application, into: batch)
                for (entry, outcome) in zip(application, staged.outcomes) {
                    staged.results[entry.index] = .application(outcome)
                }
                if confChanged {
                    RaftLogStore.stage(appliedConfState: confState, group: id, family: host.raftFamily, into: batch)
                }
            } catch {
                failed(error, staged, host: host)
                return nil
            }
            return staged
        }

        /// Staging or writing failed: the node's groups stop (a state that may or may not be written cannot be
        /// reasoned about; a restart replays from what is on disk).
        func failed(_ error: any Error, _ staged: Staged, host: RaftHost) {
            failure = error
            Self.fail(staged.job, error)
            host.enqueue { host.storageFailed(error) }
        }

        /// After the batch holding `staged` is written: publishes the applied index, delivers, completes.
        func finish(_ staged: Staged, host: RaftHost) {
            let last = staged.last
            let released = progress.withLock { progress in
                progress.applied = last
                let ready = progress.reads.filter { $0.index <= last }
                progress.reads.removeAll { $0.index <= last }
                return ready
            }
            appliedTerm = staged.term
            host.appliedEntries.add(staged.outcomes.count, ordering: .relaxed)
            if staged.viewChanged {
                let view = self.view
                host.enqueue { host.adopt(view) }
            }
            if !staged.outcomes.isEmpty { host.appliedHandler(id, staged.outcomes) }
            for (index, waiter) in staged.job.waiters {
                if let result = staged.results[index] {
                    waiter(.success(result))
                } else {
                    waiter(.failure(ClusterError(.outcomeUnknown, "entry \(index) produced no outcome")))
                }
            }
            for read in released { read.completion(.success(())) }
            if last >= compactedThrough + host.options.compactionEntries {
                // The entries up to `last` are applied: the log drops them (the write that records it is synced,
                // which makes this state durable first).
                compactedThrough = last
                let (id, confState) = (self.id, self.confState)
                host.enqueue { host.compact(id, at: last, confState: confState) }
            }
            if staged.job.makesSnapshot { makeSnapshot(at: last, term: staged.term, host: host) }
        }

        /// Makes a snapshot of the state at the applied index `applied` for a follower, from a consistent read
        /// view taken now (nothing of this group was written since): the scan runs on the pool while the group
        /// goes on applying, then the scheduler hands it to the log.
        func makeSnapshot(at applied: UInt64, term: UInt64, host: RaftHost) {
            let reading = host.database.makeSnapshot()
            let cluster = id == 0 ? view.records.map(\.record) : []
            let metadata = SnapshotMetadata(index: applied, term: term, confState: confState)
            let id = self.id
            host.applyPool.async {
                let made: Snapshot?
                do {
                    var state = Warbler_Peer_V1_GroupSnapshot()
                    state.cluster = cluster
                    state.state = try self.machine.snapshotState(reading: reading).map(\.record)
                    made = Snapshot(data: try state.serializedBytes(), metadata: metadata)
                } catch {
                    host.logger.error(
                        "cannot snapshot a group",
                        metadata: ["raft.group": "\(id)", "error": "\(error)"]
                    )
                    made = nil
                }
                host.enqueue { host.made(made, of: id) }
            }
        }

        static func fail(_ job: ApplyJob, _ error: any Error) {
            for waiter in job.waiters.values { waiter(.failure(error)) }
        }

        /// Replaces the group's state with a snapshot's (the leader sent it, or it was persisted and not yet
        /// installed when the node stopped).
        func install(_ snapshot: Snapshot, into batch: WriteBatch, host: RaftHost) throws {
            if let view = try host.stageState(of: snapshot, group: id, machine: machine, into: batch) {
                self.view = view
            }
            confState = snapshot.metadata.confState
            compactedThrough = max(compactedThrough, snapshot.metadata.index)
            host.logger.notice(
                "installed a snapshot",
                metadata: ["raft.group": "\(id)", "raft.index": "\(snapshot.metadata.index)"]
            )
        }

        /// Deletes the group's log and state once everything before it is applied.
        func destroy(then done: @escaping @Sendable (Bool) -> Void) {
            queue.async {
                guard let host = self.host else { return done(false) }
                let batch = WriteBatch()
                RaftLogStore.stageDestroy(group: self.id, family: host.raftFamily, into: batch)
                self.machine.destroy(into: batch)
                do {
                    try host.database.write(batch, sync: true)
                    done(true)
                } catch {
                    host.logger.error("cannot delete a group this node left", metadata: ["raft.group": "\(self.id)"])
                    done(false)
                }
            }
        }
    }

    /// Installs a snapshot that was persisted in the log but whose state was not written when the node stopped
    /// (the scheduler syncs the snapshot, the applier installs it later). Runs when the group opens.
    /// Returns true when it installed one (the log must then be reopened to load the membership). A log that
    /// starts at a compaction holds no data: the stored state is already the state there.
    func recover(_ id: UInt32, log: RaftLogStore, machine: Machine) throws -> Bool {
        let snapshot = try log.snapshot()
        guard !snapshot.data.isEmpty, snapshot.metadata.index > (try machine.appliedIndex()) else { return false }
        let batch = WriteBatch()
        _ = try stageState(of: snapshot, group: id, machine: machine, into: batch)
        try database.write(batch, sync: true)
        logger.notice(
            "installed a stored snapshot",
            metadata: ["raft.group": "\(id)", "raft.index": "\(snapshot.metadata.index)"]
        )
        return true
    }

    /// Stages replacing a group's state (and, for the metadata group, the cluster records) with `snapshot`'s,
    /// with the snapshot's membership as the applied one. Returns the metadata group's new cluster view.
    func stageState(
        of snapshot: Snapshot,
        group id: UInt32,
        machine: Machine,
        into batch: WriteBatch
    ) throws -> ClusterView? {
        let decoded: Warbler_Peer_V1_GroupSnapshot
        do { decoded = try Warbler_Peer_V1_GroupSnapshot(serializedBytes: snapshot.data) } catch {
            throw StorageError(.corruption, "snapshot of group \(id) cannot be decoded", cause: "\(error)")
        }
        var view: ClusterView?
        if id == 0 {
            let range = ClusterView.replicatedRange
            batch.deleteRange(from: range.start, to: range.end, in: clusterFamily)
            for record in decoded.cluster { batch.put([UInt8](record.key), [UInt8](record.value), in: clusterFamily) }
            view = try ClusterView(records: decoded.cluster.map(StateRecord.init))
        }
        try machine.restore(decoded.state.map(StateRecord.init), index: snapshot.metadata.index, into: batch)
        RaftLogStore.stage(appliedConfState: snapshot.metadata.confState, group: id, family: raftFamily, into: batch)
        return view
    }

    /// The metadata group applied a change of the cluster: the scheduler plans with it from now on.
    func adopt(_ newView: ClusterView) {
        view = newView
        publishView()
    }

    /// Drops a group's log up to `applied` (or less, see ``compactionIndex(_:applied:)``), which its applier
    /// applied: one small synced write, which also makes durable the state written (unsynced) by the applies
    /// before it, so the entries are no longer needed.
    func compact(_ id: UInt32, at applied: UInt64, confState: ConfState) {
        guard let group = groups[id], let first = try? group.log.firstIndex() else { return }
        let index = compactionIndex(group, applied: applied)
        guard index >= first else { return }
        let batch = WriteBatch()
        do { try group.log.stageCompaction(at: index, confState: confState, into: batch) } catch {
            logger.error("compaction failed", metadata: ["raft.group": "\(id)", "error": "\(error)"])
            return
        }
        do { try database.write(batch, sync: true) } catch {
            storageFailed(error)
            return
        }
        logger.debug("compacted a group log", metadata: ["raft.group": "\(id)", "raft.index": "\(index)"])
    }

    /// How far a compaction may cut the log: to `applied`, except that a leader keeps what members still
    /// catching up need — while a snapshot for one is being made, sent and stored (which takes seconds for a
    /// large partition, and the member may not answer meanwhile), the entries after the snapshot and after the
    /// lagging members' matches, until they have caught up or ``snapshotRetentionTicks`` passed; and always
    /// the entries after an active member's match (``keepsEntries(recentlyActive:state:)``). Otherwise the log
    /// moves on faster than a large snapshot travels, and the member needs snapshot after snapshot. Members never
    /// hold back more than ``retainedEntries``: one that is gone for good gets a snapshot when it returns.
    func compactionIndex(_ group: Group, applied: UInt64) -> UInt64 {
        let members = group.node.progress.filter { $0.key != nodeID }.values.map {
            ($0.match, Self.keepsEntries(recentlyActive: $0.recentActive, state: $0.state))
        }
        let (index, holding) = Self.compactionIndex(
            applied: applied,
            members: members,
            hold: group.snapshotHold.flatMap { ticks - $0.tick < Self.snapshotRetentionTicks ? $0.index : nil },
            retained: retainedEntries
        )
        if !holding { group.snapshotHold = nil }
        return index
    }

    /// The rule of ``compactionIndex(_:applied:)``: `members` are the other members' matches and whether they
    /// count as active (``keepsEntries(recentlyActive:state:)``; empty unless this node leads), `hold` the index
    /// of a snapshot being made or sent for a member (if still within its time). Returns the index, and whether
    /// the hold still holds.
    static func compactionIndex(
        applied: UInt64,
        members: [(match: UInt64, active: Bool)],
        hold: UInt64?,
        retained: UInt64
    ) -> (index: UInt64, holding: Bool) {
        var index = applied
        var holding = false
        if let hold, let lowest = members.map(\.match).filter({ $0 < applied }).min() {
            index = min(index, max(hold, lowest))
            holding = true
        }
        for member in members where member.active { index = min(index, member.match) }
        return (max(index, applied - min(applied, retained)), holding)
    }

    /// Whether a member's progress keeps the entries after its match from compaction: it answered since the
    /// last check-quorum round, or the leader is streaming entries to it. A member that is catching up can be
    /// silent for longer than an election timeout while it stores and applies what it received (seen: a
    /// follower that had just installed a 73 MB snapshot acknowledged nothing for a second); were its entries
    /// dropped then, it would need another snapshot, and another. A member that stopped for good stays in that
    /// state too, so it holds back at most ``retainedEntries``.
    static func keepsEntries(recentlyActive: Bool, state: WarblerRaft.Progress.State) -> Bool {
        recentlyActive || state == .replicate
    }

    /// The most entries a compaction keeps for members that are catching up.
    var retainedEntries: UInt64 { max(5 * options.compactionEntries, 100_000) }

    /// How long (in ticks) a compaction keeps the entries after a snapshot sent to a member: two minutes.
    static var snapshotRetentionTicks: Int { 1_200 }

    /// Raft needs a snapshot of group `id` to catch a follower up: the applier makes one of its applied state,
    /// in the order of its applies (one request at a time).
    func snapshotNeeded(_ id: UInt32) {
        guard let group = groups[id], !group.snapshotRequested, !failed else { return }
        group.snapshotRequested = true
        // The snapshot will be at the applied index, which the log still holds: keep it until it is sent.
        group.snapshotHold = ((try? group.log.firstIndex()).map { $0 - 1 } ?? 0, ticks)
        let applier = group.applier
        applyQueue.async {
            self.apply([(applier, ApplyJob(snapshot: nil, entries: [], waiters: [:], makesSnapshot: true))])
        }
    }

    /// The applier made a snapshot for ``snapshotNeeded(_:)`` (nil: it could not): Raft sends it at the
    /// follower's next heartbeat answer.
    func made(_ snapshot: Snapshot?, of id: UInt32) {
        guard let group = groups[id] else { return }
        group.snapshotRequested = false
        guard let snapshot else {
            group.snapshotHold = nil
            return
        }
        group.snapshotHold = (snapshot.metadata.index, ticks)
        group.log.offer(snapshot)
        logger.info(
            "made a snapshot for a follower",
            metadata: [
                "raft.group": "\(id)", "raft.index": "\(snapshot.metadata.index)",
                "snapshot.bytes": "\(snapshot.data.count)",
            ]
        )
    }
}

extension ConfState {
    /// The membership after `change`.
    mutating func apply(_ change: ConfChange) {
        switch change.kind {
        case .addNode:
            voters.insert(change.nodeID)
            learners.remove(change.nodeID)
        case .addLearner:
            learners.insert(change.nodeID)
            voters.remove(change.nodeID)
        case .removeNode:
            voters.remove(change.nodeID)
            learners.remove(change.nodeID)
        }
    }
}
