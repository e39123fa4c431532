import Dispatch
import Foundation
import Logging
import Synchronization
import WarblerRaft
import WarblerStorage
import WarblerWire

// Applying committed entries, off the scheduler: every group has its own applier.
extension RaftHost {
    typealias ReadCompletion = @Sendable (Result<Void, any Error>) -> Void

    /// What a scheduling round hands to a group's applier once the round's batch is on disk: a snapshot to
    /// install first (when the round received one), the committed entries in index order, and the proposers
    /// waiting for their outcomes.
    struct ApplyJob: Sendable {
        var snapshot: Snapshot?
        var entries: [Entry]
        var waiters: [UInt64: Waiter]
    }

    /// Applies one group's committed entries to its state machine on the group's own serial queue, so that a
    /// slow apply (a large batch, a snapshot restore, a compaction) never delays the scheduler — and so never
    /// another group's replication.
    ///
    /// The applier writes the state its entries produce, the applied membership (`0x04|group`) and, for the
    /// metadata group, the cluster records in its own unsynced batch. That is safe because the scheduler wrote
    /// (and synced) the entries before handing them over: RocksDB's write-ahead log is replayed in order, so a
    /// crash can lose a suffix of applied state but never keep state whose entries it lost; on restart the
    /// group replays its committed entries from the stored applied index, and a snapshot persisted but not yet
    /// installed is installed when the group opens (``RaftHost/recover(_:log:)``).
    final class Applier: @unchecked Sendable {
        let id: UInt32
        let machine: Machine
        let queue: DispatchQueue
        weak var host: RaftHost?

        // Confined to `queue`.
        private var confState: ConfState
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
            compactedThrough: UInt64,
            view: ClusterView,
            pool: DispatchQueue
        ) {
            self.id = id
            self.machine = machine
            self.confState = confState
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

        func submit(_ job: ApplyJob) {
            queue.async { self.run(job) }
        }

        func run(_ job: ApplyJob) {
            guard let host else {
                return Self.fail(job, ClusterError(.stopped, "the node is stopping"))
            }
            if let failure { return Self.fail(job, failure) }
            let batch = WriteBatch()
            var results: [UInt64: AppliedResult] = [:]
            var outcomes: [Machine.Outcome] = []
            var viewChanged = false
            var confChanged = false
            var last = appliedIndex
            do {
                if let snapshot = job.snapshot {
                    try install(snapshot, into: batch, host: host)
                    viewChanged = id == 0
                    confChanged = true
                    last = max(last, snapshot.metadata.index)
                }
                var application: [Entry] = []
                for entry in job.entries {
                    last = max(last, entry.index)
                    switch entry.kind {
                    case .confChange:
                        guard let change = try? ConfChange(decoding: entry.data) else { continue }
                        confState.apply(change)
                        confChanged = true
                    case .normal where entry.data.first == RaftHost.clusterTag:
                        guard id == 0, let command = try? ClusterCommand(serializedBytes: Array(entry.data[1...]))
                        else {
                            results[entry.index] = .cluster("not a cluster command")
                            continue
                        }
                        results[entry.index] = .cluster(view.apply(command, into: batch, family: host.clusterFamily))
                        viewChanged = true
                    case .normal where !entry.data.isEmpty:
                        application.append(
                            Entry(term: entry.term, index: entry.index, kind: .normal, data: Array(entry.data[1...]))
                        )
                    case .normal:
                        continue
                    }
                }
                outcomes = try machine.apply(application, into: batch)
                for (entry, outcome) in zip(application, outcomes) { results[entry.index] = .application(outcome) }
                if confChanged {
                    RaftLogStore.stage(appliedConfState: confState, group: id, family: host.raftFamily, into: batch)
                }
                try host.database.write(batch, sync: false)
            } catch {
                failure = error
                Self.fail(job, error)
                host.enqueue { host.storageFailed(error) }
                return
            }
            let released = progress.withLock { progress in
                progress.applied = last
                let ready = progress.reads.filter { $0.index <= last }
                progress.reads.removeAll { $0.index <= last }
                return ready
            }
            host.appliedEntries.add(outcomes.count, ordering: .relaxed)
            if viewChanged {
                let view = self.view
                host.enqueue { host.adopt(view) }
            }
            if !outcomes.isEmpty { host.appliedHandler(id, outcomes) }
            for (index, waiter) in job.waiters {
                if let result = results[index] {
                    waiter(.success(result))
                } else {
                    waiter(.failure(ClusterError(.outcomeUnknown, "entry \(index) produced no outcome")))
                }
            }
            for read in released { read.completion(.success(())) }
            maybeCompact(at: last, host: host)
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

        /// Once enough applied entries follow the last snapshot, takes a snapshot of the state at the applied
        /// index (here, where that state is exact) and asks the scheduler to compact the log up to it.
        func maybeCompact(at applied: UInt64, host: RaftHost) {
            guard applied >= compactedThrough + host.options.compactionEntries else { return }
            do {
                var snapshot = Warbler_Peer_V1_GroupSnapshot()
                if id == 0 { snapshot.cluster = view.records.map(\.record) }
                snapshot.state = try machine.snapshotState().map(\.record)
                let data: [UInt8] = try snapshot.serializedBytes()
                let confState = self.confState
                compactedThrough = applied
                let id = self.id
                host.enqueue { host.compact(id, at: applied, confState: confState, data: data) }
            } catch {
                host.logger.error("cannot snapshot a group", metadata: ["raft.group": "\(id)", "error": "\(error)"])
            }
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
    /// Returns true when it installed one (the log must then be reopened to load the membership).
    func recover(_ id: UInt32, log: RaftLogStore, machine: Machine) throws -> Bool {
        let snapshot = try log.snapshot()
        guard snapshot.metadata.index > (try machine.appliedIndex()) else { return false }
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

    /// Compacts a group's log up to `index` with a snapshot its applier took at that index.
    func compact(_ id: UInt32, at index: UInt64, confState: ConfState, data: [UInt8]) {
        guard let group = groups[id], let first = try? group.log.firstIndex(), index >= first else { return }
        do {
            let batch = WriteBatch()
            try group.log.stageCompaction(at: index, confState: confState, data: data, into: batch)
            try database.write(batch, sync: false)
            logger.debug("compacted a group log", metadata: ["raft.group": "\(id)", "raft.index": "\(index)"])
        } catch {
            logger.error("compaction failed", metadata: ["raft.group": "\(id)", "error": "\(error)"])
        }
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
