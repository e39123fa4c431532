import Dispatch
import Logging
import Synchronization
import WarblerRaft
import WarblerStorage

/// Drives one Raft group on this node: takes proposals, runs the `RawNode`, persists each `Ready` (log and
/// applied state in **one synced batch**: group commit), and hands each proposer the outcome of its entry.
///
/// Every proposal that arrives while a batch is being written joins the next batch, so one fsync commits as
/// many messages as arrived during the previous one. A single-voter group commits in the same round it
/// appends. All Raft and storage work runs on one serial queue (blocking calls never run on an event loop or
/// the cooperative pool); callers wait on continuations or completions.
public final class GroupDriver<Machine: GroupStateMachine>: @unchecked Sendable {
    /// Called with each proposal's result, on the driver's queue, in log order.
    public typealias Completion = @Sendable (Result<Machine.Outcome, any Error>) -> Void

    private struct Pending {
        var data: [UInt8]
        var completion: Completion
    }

    private struct Inbox {
        var proposals: [Pending] = []
        var scheduled = false
        var stopped = false
    }

    /// The group's id.
    public let group: UInt32
    private let database: Database
    private let log: RaftLogStore
    private let machine: Machine
    private let logger: Logger
    private let queue: DispatchQueue
    private let inbox = Mutex(Inbox())
    private let syncedBatches = Atomic<Int>(0)
    private let appliedEntries = Atomic<Int>(0)
    // Confined to `queue`.
    private var node: RawNode
    private var waiting: [UInt64: (term: UInt64, completion: Completion)] = [:]
    private let appliedHandler: (@Sendable ([Machine.Outcome]) -> Void)?
    private var timer: DispatchSourceTimer?

    /// Opens the group over its log in `database`. The log MUST exist (bootstrapped, or filled by a leader).
    public init(
        group: UInt32,
        nodeID: NodeID,
        database: Database,
        log: RaftLogStore,
        machine: Machine,
        config: Config? = nil,
        logger: Logger,
        onApplied: (@Sendable ([Machine.Outcome]) -> Void)? = nil
    ) throws {
        self.appliedHandler = onApplied
        self.group = group
        self.database = database
        self.log = log
        self.machine = machine
        self.logger = logger
        var raftConfig = config ?? Config(id: nodeID)
        // The state machine's stored applied index is where replay starts.
        raftConfig.applied = max(try machine.appliedIndex(), try log.firstIndex() - 1)
        node = try RawNode(config: raftConfig, storage: log)
        queue = DispatchQueue(label: "warbler.group.\(group)")
    }

    /// Starts ticking every `tickInterval`; a single-voter group elects itself at once.
    public func start(tickInterval: DispatchTimeInterval = .milliseconds(100)) {
        queue.sync {
            if node.confState.voters == [node.id] { node.campaign() }
            processReadies()
            let timer = DispatchSource.makeTimerSource(queue: queue)
            timer.schedule(deadline: .now() + tickInterval, repeating: tickInterval)
            timer.setEventHandler { [weak self] in
                guard let self else { return }
                self.node.tick()
                self.processReadies()
            }
            timer.resume()
            self.timer = timer
        }
    }

    /// Stops the group: pending proposals fail with ``GroupDriverError/Code/stopped``.
    public func stop() {
        let pending = inbox.withLock { inbox -> [Pending] in
            inbox.stopped = true
            defer { inbox.proposals = [] }
            return inbox.proposals
        }
        for proposal in pending {
            proposal.completion(.failure(GroupDriverError(.stopped, "group \(group) stopped")))
        }
        queue.sync {
            timer?.cancel()
            timer = nil
            failWaiting(GroupDriverError(.stopped, "group \(group) stopped"))
        }
    }

    /// Batches written (each one fsync) and application entries applied since start: entries per batch is the
    /// group-commit factor.
    public var statistics: (syncedBatches: Int, appliedEntries: Int) {
        (syncedBatches.load(ordering: .relaxed), appliedEntries.load(ordering: .relaxed))
    }

    /// True when this node leads the group.
    public var isLeader: Bool { queue.sync { node.softState.role == .leader } }

    /// Proposes `data` and returns the outcome of applying it once committed.
    ///
    /// - Throws: ``GroupDriverError`` — `unavailable` when nothing was appended, `outcomeUnknown` when the
    ///   entry was appended but its fate is unknown, `stopped` on shutdown; or the storage error that stopped
    ///   the group.
    public func propose(_ data: [UInt8]) async throws -> Machine.Outcome {
        try await withCheckedThrowingContinuation { continuation in
            submit(data) { continuation.resume(with: $0) }
        }
    }

    /// Enqueues `data` now (proposals keep the order of `submit` calls) and calls `completion` with its outcome
    /// once committed and applied, or with the error of ``propose(_:)``.
    public func submit(_ data: [UInt8], completion: @escaping Completion) {
        let schedule = inbox.withLock { inbox -> Bool? in
            if inbox.stopped { return nil }
            inbox.proposals.append(Pending(data: data, completion: completion))
            if inbox.scheduled { return false }
            inbox.scheduled = true
            return true
        }
        switch schedule {
        case nil: completion(.failure(GroupDriverError(.stopped, "group \(group) stopped")))
        case true?: queue.async { self.runRounds() }
        case false?: break
        }
    }

    // MARK: - The loop (on `queue`)

    private func runRounds() {
        while true {
            let batch = inbox.withLock { inbox -> [Pending] in
                defer { inbox.proposals = [] }
                if inbox.proposals.isEmpty { inbox.scheduled = false }
                return inbox.proposals
            }
            if batch.isEmpty { return }
            propose(batch)
            processReadies()
        }
    }

    private func propose(_ batch: [Pending]) {
        let firstIndex = node.lastIndex + 1
        let term = node.hardState.term
        do {
            try node.proposeBatch(batch.map(\.data))
        } catch {
            let failure = GroupDriverError(.unavailable, error.message, leaderHint: error.leaderHint)
            for proposal in batch { proposal.completion(.failure(failure)) }
            return
        }
        for (offset, proposal) in batch.enumerated() {
            waiting[firstIndex + UInt64(offset)] = (term, proposal.completion)
        }
    }

    private func processReadies() {
        while node.hasReady {
            let ready = node.ready()
            let batch = WriteBatch()
            log.stage(ready, into: batch)
            let applied = ready.committedEntries.filter { $0.kind == .normal && !$0.data.isEmpty }
            let outcomes: [Machine.Outcome]
            do {
                outcomes = try machine.apply(applied, into: batch)
                let sync = ready.mustSync || !ready.committedEntries.isEmpty
                try database.write(batch, sync: sync)
                if sync { syncedBatches.add(1, ordering: .relaxed) }
                appliedEntries.add(applied.count, ordering: .relaxed)
            } catch {
                // A write that may or may not be on disk leaves the log in an unknown state: stop the group.
                logger.critical(
                    "storage failed; stopping the group",
                    metadata: ["raft.group": "\(group)", "error": "\(error)"]
                )
                failWaiting(error)
                inbox.withLock { $0.stopped = true }
                timer?.cancel()
                return
            }
            node.advance(ready)
            if let soft = ready.softState {
                logger.info(
                    "role changed",
                    metadata: [
                        "raft.group": "\(group)", "raft.role": "\(soft.role.rawValue)",
                        "raft.term": "\(node.hardState.term)",
                    ]
                )
                if soft.role != .leader { failWaiting(GroupDriverError(.outcomeUnknown, "leadership lost")) }
            }
            // Every applied outcome first (delivery to online sessions), then each proposer's own.
            if !outcomes.isEmpty { appliedHandler?(outcomes) }
            for (entry, outcome) in zip(applied, outcomes) {
                guard let waiter = waiting.removeValue(forKey: entry.index) else { continue }
                if waiter.term == entry.term {
                    waiter.completion(.success(outcome))
                } else {
                    waiter.completion(.failure(GroupDriverError(.outcomeUnknown, "entry was replaced")))
                }
            }
            // Waiters whose index was committed with a non-application entry (a new leader's no-op) lost theirs.
            for entry in ready.committedEntries where entry.kind != .normal || entry.data.isEmpty {
                waiting.removeValue(forKey: entry.index)?.completion(
                    .failure(GroupDriverError(.outcomeUnknown, "entry was replaced"))
                )
            }
        }
    }

    private func failWaiting(_ error: any Error) {
        let waiters = waiting
        waiting = [:]
        for waiter in waiters.values { waiter.completion(.failure(error)) }
    }
}
