import Dispatch
import Foundation
import Logging
import NIOCore
import Synchronization
import WarblerRaft
import WarblerStorage
import WarblerWire

/// The multi-Raft node runtime: every Raft group this node replicates (the metadata group 0 and partitions),
/// driven by **one** scheduler.
///
/// Each scheduling round steps incoming messages and proposals into their groups, then persists every
/// group's Ready — log entries, hard states, snapshots — in **one write batch with one fsync**, and only then
/// sends the round's messages, coalesced into one frame per peer. Proposals that arrive during a round join the
/// next one (group commit across all groups). Groups that have nothing to do cost nothing but a tick.
///
/// A round's committed entries are applied off the scheduler, on one apply queue that writes every group's state
/// of the round in one batch, so no group's apply holds up any group's replication; heavy apply work —
/// installing a snapshot, a large catch-up — runs on the group's own queue
/// (``Applier``), together with the group's later entries until it is done, so it holds up no other group's
/// apply either. Raft and log work runs on one serial queue, never on an event loop or the cooperative pool.
public final class RaftHost<Machine: GroupStateMachine>: @unchecked Sendable {
    /// Tuning of the runtime; the defaults suit a LAN or a few regions.
    public struct Options: Sendable {
        public var tickInterval: Duration = .milliseconds(100)
        /// Election timeout in ticks (randomised in `[electionTicks, 2*electionTicks)`).
        public var electionTicks = 10
        public var heartbeatTicks = 1
        /// How often (in ticks) leaders move replicas toward the desired placement.
        public var reconcileTicks = 10
        /// How long a proposal or a read waits for a leader before failing with `unavailable`.
        public var requestTimeout: Duration = .seconds(5)
        /// Compact a group's log once this many applied entries follow its start: the entries are dropped
        /// (the state machine's stored state holds their effects), nothing is copied. A follower that needs
        /// dropped entries gets a snapshot of the state, made when it is needed.
        public var compactionEntries: UInt64 = 20_000
        /// Idle groups go quiet: a leader with nothing in flight stops ticking and heartbeating, and followers
        /// stop ticking while the leader's node is alive (its one liveness frame per tick).
        public var quiesce = true
        /// How long local proposals may wait for the round being applied, to go into one round together.
        public var proposalWindow: Duration = .milliseconds(2)
        /// The apply queue writes and answers a round's entries in batches of at most this many (a round of
        /// one sender's window holds hundreds): the first acknowledgements and deliveries leave while the rest
        /// is applied, so clients send again and the next round is persisted meanwhile, instead of every stage
        /// waiting for the whole round before it.
        public var applyChunkEntries = 64
        /// A peer not heard from for this many ticks (or whose connection closed) is considered down.
        public var livenessTicks = 3
        public init() {}
    }

    /// Called on each proposer with the outcome of its entry.
    public typealias Completion = @Sendable (Result<Machine.Outcome, any Error>) -> Void
    typealias Waiter = @Sendable (Result<AppliedResult, any Error>) -> Void

    enum AppliedResult: Sendable {
        case application(Machine.Outcome)
        case cluster(String?)
    }

    static var applicationTag: UInt8 { 0x00 }
    static var clusterTag: UInt8 { 0x01 }

    final class Group: @unchecked Sendable {
        let id: UInt32
        /// Whatever drives the node — a step, a proposal, a tick, taking or advancing a Ready — may give it
        /// something to do: the group is noted for the scheduler's next look (``RaftHost/processReadies()``
        /// looks only at the groups noted since its last look, not at every group).
        var node: RawNode {
            didSet { note() }
        }
        /// The group is in the scheduler's list of groups to look at.
        var isNoted = false
        let noted: (Group) -> Void
        let log: RaftLogStore
        var waiting: [UInt64: (term: UInt64, waiter: Waiter)] = [:]
        var readRequests: [UInt64: ReadRequest] = [:]
        let applier: Applier
        var wasMember: Bool
        /// The tick at which this replica last heard from the group's leader (bounded-stale reads).
        var leaderContactTick = -1
        /// The incarnation of the leader's node when this replica last heard from the leader.
        var leaderIncarnation: UInt64 = 0
        /// Consecutive ticks this leader had nothing in flight; from 3 on, the group is quiet.
        var quietTicks = 0
        /// This follower stopped ticking because its leader's node is alive.
        var suspended = false
        /// The applier is making a snapshot of the state for a follower the log cannot catch up.
        var snapshotRequested = false
        /// A snapshot for a member is being made (at an index at or after the log's start) or was made or sent
        /// (at `index`) at `tick`: compaction keeps the entries after it until the members have caught up.
        var snapshotHold: (index: UInt64, tick: Int)?

        /// Puts the group in the scheduler's list of groups to look at (once).
        func note() {
            guard !isNoted else { return }
            isNoted = true
            noted(self)
        }

        init(id: UInt32, node: RawNode, log: RaftLogStore, applier: Applier, noted: @escaping (Group) -> Void) {
            self.id = id
            self.node = node
            self.noted = noted
            self.log = log
            self.applier = applier
            self.wasMember = node.confState.voters.contains(node.id) || node.confState.learners.contains(node.id)
        }
    }

    struct ReadRequest {
        var deadline: Int
        /// When the request was last handed to Raft (0: not yet; no leader was known).
        var issuedAt: Int
        var completion: @Sendable (Result<Void, any Error>) -> Void
    }

    struct Inbox {
        var proposals: [(group: UInt32, data: [UInt8], waiter: Waiter)] = []
        var messages: [(group: UInt32, message: Message)] = []
        var tasks: [@Sendable () -> Void] = []
        var scheduled = false
        var stopped = false
        /// Proposals are held for the round being applied: since when, and how many rounds were applied then.
        var hold: (since: ContinuousClock.Instant, done: Int)?
    }

    public let nodeID: UInt64
    let options: Options
    let database: Database
    let raftFamily: ColumnFamily
    let clusterFamily: ColumnFamily
    let transport: PeerTransport?
    let logger: Logger
    let makeMachine: @Sendable (UInt32) throws -> Machine
    let appliedHandler: @Sendable (UInt32, [Machine.Outcome]) -> Void
    let completionScope: @Sendable (() -> Void) -> Void
    let queue = SerialLoop(name: "warbler-raft")
    /// Where every round's committed entries are applied, all groups' in one batch, while the scheduler goes
    /// on persisting and sending the next rounds.
    let applyQueue = SerialLoop(name: "warbler-apply")
    /// Rounds handed to the apply queue, and rounds it finished.
    let applyRounds = Mutex<(queued: Int, done: Int)>((0, 0))
    /// Where groups' heavy apply work runs (each group on its own serial queue).
    let applyPool = DispatchQueue(label: "warbler.apply.pool", attributes: .concurrent)
    let inbox = Mutex(Inbox())
    /// Application proposals waiting to be forwarded to their group's leader, per group, in submission order.
    let forwarding = Mutex<[UInt32: [ForwardedProposal]]>([:])
    let published = Mutex<(leaders: [UInt32: UInt64], view: ClusterView)>(([:], ClusterView()))
    let syncedBatches = Atomic<Int>(0)
    let appliedEntries = Atomic<Int>(0)
    let readContext = Atomic<UInt64>(1)
    /// Per peer: its incarnation and when a frame last arrived from it (written on event loops).
    let liveness = Mutex<[UInt64: (incarnation: UInt64, heard: ContinuousClock.Instant)]>([:])
    /// This process's incarnation, sent in every Raft batch.
    let incarnation = UInt64(Date().timeIntervalSince1970 * 1000)

    // Confined to `queue`.
    var groups: [UInt32: Group] = [:]
    /// Groups whose node was driven since the scheduler last looked for Readies (see ``Group/node``).
    var noted: [Group] = []
    var view: ClusterView
    var ticks = 0
    var timer: RepeatedTask?
    var failed = false
    /// Groups this node left whose replica is being deleted (messages for them are ignored meanwhile).
    var destroying: Set<UInt32> = []
    /// Reads of groups this node does not replicate yet (it is joining): handed to the group when a leader
    /// creates its replica here, failed at their deadline otherwise.
    var awaitingReplica: [UInt32: [UInt64: ReadRequest]] = [:]

    /// Opens every group stored in `database`.
    ///
    /// - Parameters:
    ///   - makeMachine: the state machine of a group (called for stored groups now, and for groups a leader
    ///     creates on this node later).
    ///   - onApplied: every applied batch of outcomes, per group, on every replica (delivery to local sessions).
    ///   - completionScope: runs the completions and `onApplied` calls of each written apply batch (its
    ///     argument), on the thread that applied it: a server gathers what they write to each connection and
    ///     writes it once per batch.
    public init(
        nodeID: UInt64,
        database: Database,
        raftFamily: ColumnFamily,
        clusterFamily: ColumnFamily,
        transport: PeerTransport?,
        options: Options = Options(),
        logger: Logger,
        makeMachine: @escaping @Sendable (UInt32) throws -> Machine,
        onApplied: @escaping @Sendable (UInt32, [Machine.Outcome]) -> Void,
        completionScope: @escaping @Sendable (() -> Void) -> Void = { $0() }
    ) throws {
        self.nodeID = nodeID
        self.options = options
        self.database = database
        self.raftFamily = raftFamily
        self.clusterFamily = clusterFamily
        self.transport = transport
        self.logger = logger
        self.makeMachine = makeMachine
        self.appliedHandler = onApplied
        self.completionScope = completionScope
        view = ClusterView()
        for id in try RaftLogStore.groups(in: database, family: raftFamily) {
            groups[id] = try openGroup(id)
        }
        view = try ClusterView.load(from: database, family: clusterFamily)
        publishView()
    }

    func openGroup(_ id: UInt32) throws -> Group {
        var log = try RaftLogStore(database: database, family: raftFamily, group: id)
        let machine = try makeMachine(id)
        if try recover(id, log: log, machine: machine) {
            log = try RaftLogStore(database: database, family: raftFamily, group: id)
        }
        log.snapshotNeeded = { [weak self] in self?.snapshotNeeded(id) }
        var config = Config(id: nodeID)
        config.electionTick = options.electionTicks
        config.heartbeatTick = options.heartbeatTicks
        config.applied = max(try machine.appliedIndex(), try log.firstIndex() - 1)
        config.randomSeed = UInt64.random(in: 1...UInt64.max)
        config.maxUncommittedEntriesSize = 64 << 20
        let applier = Applier(
            id: id,
            machine: machine,
            confState: try log.initialState().1,
            applied: config.applied,
            appliedTerm: try log.term(at: config.applied),
            compactedThrough: try log.firstIndex() - 1,
            view: id == 0 ? try ClusterView.load(from: database, family: clusterFamily) : ClusterView(),
            pool: applyPool
        )
        applier.host = self
        let node = try RawNode(config: config, storage: log)
        let group = Group(id: id, node: node, log: log, applier: applier) { [unowned self] in self.noted.append($0) }
        group.note()
        return group
    }

    // MARK: - Lifecycle

    /// Starts ticking; one-voter groups elect themselves at once.
    public func start() {
        queue.sync { [self] in
            for group in groups.values where group.node.confState.voters == [nodeID] { group.node.campaign() }
            runRound()
            timer = queue.repeating(every: options.tickInterval) { [weak self] in self?.tick() }
        }
    }

    /// Stops ticking; pending proposals and reads fail with `stopped`.
    public func stop() {
        let pending = inbox.withLock { inbox -> [(group: UInt32, data: [UInt8], waiter: Waiter)] in
            inbox.stopped = true
            defer { inbox.proposals = [] }
            return inbox.proposals
        }
        let stopped = ClusterError(.stopped, "the node is stopping")
        for proposal in pending { proposal.waiter(.failure(stopped)) }
        let appliers = queue.sync { [self] in
            timer?.cancel()
            timer = nil
            failed = true
            for group in groups.values { failAll(group, stopped) }
            failReadsAwaitingReplicas(stopped)
            return groups.values.map(\.applier)
        }
        // Whatever was handed to the appliers is written before the caller closes the database.
        applyQueue.sync {}
        for applier in appliers { applier.queue.sync {} }
    }

    /// Batches written (each one fsync) and application entries applied since start.
    public var statistics: (syncedBatches: Int, appliedEntries: Int) {
        (syncedBatches.load(ordering: .relaxed), appliedEntries.load(ordering: .relaxed))
    }

    /// The cluster metadata as this node last applied it.
    public var clusterView: ClusterView { published.withLock { $0.view } }

    /// The leader of `group` as this node knows it (0 when unknown).
    public func leader(of group: UInt32) -> UInt64 { published.withLock { $0.leaders[group] ?? 0 } }

    // MARK: - Proposals

    /// Proposes application `data` to `group` — on this node when it leads the group, else forwarded to the
    /// leader — and returns its outcome once committed and applied.
    ///
    /// - Throws: ``ClusterError``: `unavailable` (nothing appended, no leader in time), `outcomeUnknown`,
    ///   `stopped`; or the storage error that stopped the node.
    public func propose(_ data: [UInt8], to group: UInt32) async throws -> Machine.Outcome {
        switch try await route([Self.applicationTag] + data, to: group) {
        case .application(let outcome): return outcome
        case .cluster: throw ClusterError(.refused, "an application proposal produced a cluster outcome")
        }
    }

    /// Proposes a cluster metadata command (group 0).
    public func propose(_ command: ClusterCommand) async throws {
        switch try await route([Self.clusterTag] + (try command.serializedBytes()), to: 0) {
        case .cluster(nil): return
        case .cluster(let refusal?): throw ClusterError(.refused, refusal)
        case .application: throw ClusterError(.refused, "a cluster command produced an application outcome")
        }
    }

    /// Proposes application `data` to `group` and calls `completion` with its outcome, like
    /// ``propose(_:to:)``, keeping the order of submission on both paths (no task on either):
    /// - when this node leads the group, the proposal goes straight into the scheduler's next round — the hot
    ///   path of a partition's leader;
    /// - when another node does, it is forwarded there with the other proposals to that group submitted in the
    ///   same event-loop turn, in one request (``forward(_:to:completion:)``).
    ///
    /// When no leader is known, or leadership moved and nothing was appended, the proposal is routed to the
    /// leader by a task that retries until ``Options/requestTimeout``.
    public func submit(_ data: [UInt8], to group: UInt32, completion: @escaping Completion) {
        let tagged = [Self.applicationTag] + data
        let leader = leader(of: group)
        guard leader == nodeID else {
            if leader != 0, transport != nil { return forward(tagged, to: group, completion: completion) }
            return reroute(tagged, to: group, until: ContinuousClock.now + options.requestTimeout, completion)
        }
        submit(tagged, to: group) { result in
            switch result {
            case .success(.application(let outcome)): completion(.success(outcome))
            case .success(.cluster): completion(.failure(ClusterError(.refused, "unexpected cluster outcome")))
            case .failure(let error as ClusterError) where error.code == .unavailable:
                self.reroute(tagged, to: group, until: ContinuousClock.now + self.options.requestTimeout, completion)
            case .failure(let error): completion(.failure(error))
            }
        }
    }

    /// Routes an application proposal in a task of its own (``route(_:to:until:)``), for when the direct paths
    /// cannot take it.
    func reroute(
        _ tagged: [UInt8],
        to group: UInt32,
        until deadline: ContinuousClock.Instant,
        _ completion: @escaping Completion
    ) {
        Task {
            do {
                switch try await self.route(tagged, to: group, until: deadline) {
                case .application(let outcome): completion(.success(outcome))
                case .cluster: completion(.failure(ClusterError(.refused, "unexpected cluster outcome")))
                }
            } catch {
                completion(.failure(error))
            }
        }
    }

    /// Proposes `tagged` on whichever node leads `group`, asking again (every 50 ms) while the group has no
    /// leader or its leader answers `unavailable`, until `deadline`.
    func route(
        _ tagged: [UInt8],
        to group: UInt32,
        until deadline: ContinuousClock.Instant? = nil
    ) async throws -> AppliedResult {
        let deadline = deadline ?? ContinuousClock.now + options.requestTimeout
        var lastError: any Error = ClusterError(.unavailable, "group \(group) has no leader")
        while ContinuousClock.now < deadline {
            let leader = leader(of: group)
            do {
                if leader == nodeID {
                    return try await withCheckedThrowingContinuation { continuation in
                        submit(tagged, to: group) { continuation.resume(with: $0) }
                    }
                } else if leader != 0, let transport {
                    return try await forward(tagged, to: group, leader: leader, transport: transport)
                }
            } catch let error as ClusterError where error.code == .unavailable {
                lastError = error
            } catch let error as PeerTransportError {
                lastError = ClusterError(.unavailable, "leader \(leader) of group \(group): \(error)")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw lastError
    }

    func forward(
        _ tagged: [UInt8],
        to group: UInt32,
        leader: UInt64,
        transport: PeerTransport
    ) async throws
        -> AppliedResult
    {
        var propose = Warbler_Peer_V1_Propose()
        propose.group = group
        propose.command = Data(tagged)
        let response = try await transport.request(.propose(propose), to: leader, timeout: options.requestTimeout)
        switch response.body {
        case .outcome(let bytes):
            if tagged.first == Self.clusterTag {
                return .cluster(bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self))
            }
            return .application(try Machine.decodeOutcome([UInt8](bytes)))
        case .error(let error):
            throw ClusterError(error)
        default:
            throw ClusterError(
                .unavailable,
                "node \(leader) answered a proposal with \(String(describing: response.body))"
            )
        }
    }

    /// A proposal forwarded by another node: proposed here only if this node leads the group.
    func handleForwarded(_ propose: Warbler_Peer_V1_Propose) async -> PeerResponse {
        var response = PeerResponse()
        do {
            let result = try await withCheckedThrowingContinuation { continuation in
                submit([UInt8](propose.command), to: propose.group) { continuation.resume(with: $0) }
            }
            switch result {
            case .application(let outcome): response.outcome = Data(Machine.encode(outcome))
            case .cluster(let refusal): response.outcome = Data((refusal ?? "").utf8)
            }
        } catch {
            response.error = Self.peerError(error)
        }
        return response
    }

    static func peerError(_ error: any Error) -> Warbler_Peer_V1_PeerError {
        var record = Warbler_Peer_V1_PeerError()
        if let error = error as? ClusterError {
            record.code = error.code.rawValue
            record.message = error.message
            record.leaderHint = error.leaderHint ?? 0
        } else {
            record.code = ClusterError.Code.unavailable.rawValue
            record.message = "\(error)"
        }
        return record
    }

    func submit(_ tagged: [UInt8], to group: UInt32, waiter: @escaping Waiter) {
        let schedule = inbox.withLock { inbox -> Bool? in
            if inbox.stopped { return nil }
            inbox.proposals.append((group, tagged, waiter))
            // Held proposals are released by the apply queue or their window, not by each new one.
            return inbox.hold == nil && scheduleLocked(&inbox)
        }
        switch schedule {
        case nil: waiter(.failure(ClusterError(.stopped, "the node is stopping")))
        case true?: queue.async { self.runRound() }
        case false?: break
        }
    }

    func scheduleLocked(_ inbox: inout Inbox) -> Bool {
        if inbox.scheduled { return false }
        inbox.scheduled = true
        return true
    }

    /// Runs `body` on the scheduler queue in the next round.
    func enqueue(_ body: @escaping @Sendable () -> Void) {
        let schedule = inbox.withLock { inbox -> Bool in
            inbox.tasks.append(body)
            return scheduleLocked(&inbox)
        }
        if schedule { queue.async { self.runRound() } }
    }

    /// Raft messages from a peer.
    func receive(_ batch: RaftBatchRecord, from peer: UInt64) {
        let now = ContinuousClock.now
        liveness.withLock { $0[peer] = (batch.incarnation, now) }
        var decoded: [(UInt32, Message)] = []
        decoded.reserveCapacity(batch.messages.count)
        for record in batch.messages {
            do {
                let message = try Message(record.message)
                guard message.from == peer, message.to == nodeID else { continue }
                decoded.append((record.group, message))
            } catch {
                logger.warning("dropping a malformed raft message", metadata: ["peer.node": "\(peer)"])
            }
        }
        guard !decoded.isEmpty else { return }
        let schedule = inbox.withLock { inbox -> Bool in
            inbox.messages.append(contentsOf: decoded.map { (group: $0.0, message: $0.1) })
            return scheduleLocked(&inbox)
        }
        if schedule { queue.async { self.runRound() } }
    }

    // MARK: - Reads

    /// Waits until this node's replica of `group` has applied everything committed when the call was made
    /// (ReadIndex): a read of local state afterwards is linearizable. On a node that is joining, the replica
    /// may not exist yet: the read waits for it (a leader creates it within a heartbeat) like for a leader.
    ///
    /// - Throws: ``ClusterError`` `unavailable` when the group has no reachable leader in time, or when this
    ///   node does not replicate the group by then.
    public func readBarrier(group id: UInt32) async throws {
        let context = readContext.add(1, ordering: .relaxed).oldValue
        let timeoutTicks = max(1, Int(options.requestTimeout / options.tickInterval))
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            enqueue {
                let request = ReadRequest(
                    deadline: self.ticks + timeoutTicks,
                    issuedAt: 0,
                    completion: { continuation.resume(with: $0) }
                )
                guard let group = self.groups[id] else {
                    self.awaitingReplica[id, default: [:]][context] = request
                    return
                }
                group.readRequests[context] = request
                self.issueRead(context, in: group)
            }
        }
    }

    /// Returns at once when this node's replica of `group` may serve a read that tolerates `maxStaleness`: it
    /// leads the group, or it heard from the leader within that time. Otherwise it waits like
    /// ``readBarrier(group:)``.
    public func boundedStaleRead(group id: UInt32, maxStaleness: Duration) async throws {
        let boundTicks = Int(maxStaleness / options.tickInterval)
        let fresh = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            enqueue {
                guard let group = self.groups[id] else { return continuation.resume(returning: false) }
                let leads = group.node.softState.role == .leader
                let recent = group.leaderContactTick >= 0 && self.ticks - group.leaderContactTick <= boundTicks
                continuation.resume(returning: leads || recent)
            }
        }
        if !fresh { try await readBarrier(group: id) }
    }

    // MARK: - The loop (on `queue`)

    func tick() {
        ticks += 1
        let live = liveness.withLock { $0 }
        let now = ContinuousClock.now
        let window = options.tickInterval * options.livenessTicks
        for group in groups.values {
            for _ in 0..<ticksDue(group, live: live, now: now, window: window) { group.node.tick() }
            expireReads(group)
            group.note()  // every group is looked at once a tick, driven or not
        }
        expireReadsAwaitingReplicas()
        if ticks % options.reconcileTicks == 0 { reconcile() }
        if options.quiesce, let transport, ticks % options.electionTicks == 0 { wakeLeaderlessLearners(transport) }
        if let transport {
            // One liveness frame per peer per tick (Raft messages of this round go in their own frames): it
            // stands in for quiet groups' heartbeats and keeps member connections from being closed as silent.
            var ping = RaftBatchRecord()
            ping.incarnation = incarnation
            for node in view.nodes.keys where node != nodeID && view.nodes[node]?.state != .removed {
                transport.sendIfConnected(ping, to: node)
            }
        }
        runRound()
    }

    /// Runs rounds until nothing is left to do.
    ///
    /// Local proposals that arrive while the apply queue has a round in hand are held until that round is
    /// applied — for at most ``Options/proposalWindow`` — and then go into one round together: most of them
    /// answer that round's acknowledgements, so this keeps rounds (and fsyncs) as large as when the scheduler
    /// applied in its own round, without a wake-up of the scheduler per proposal. The window bounds the wait: a
    /// slow apply never holds proposals longer, and nothing else waits — messages from peers, ticks and tasks
    /// are handled at once.
    func runRound() {
        while !failed {
            let now = ContinuousClock.now
            let applying = applyRounds.withLock { $0 }
            let (proposals, messages, tasks, holdUntil) = inbox.withLock { inbox in
                var take = true
                var holdUntil: ContinuousClock.Instant?
                if !inbox.proposals.isEmpty, applying.queued > applying.done {
                    if let hold = inbox.hold {
                        take = applying.done > hold.done || now - hold.since >= options.proposalWindow
                    } else {
                        inbox.hold = (now, applying.done)
                        holdUntil = now + options.proposalWindow
                        take = false
                    }
                }
                let proposals = take ? inbox.proposals : []
                if take {
                    inbox.proposals = []
                    inbox.hold = nil
                }
                defer {
                    inbox.messages = []
                    inbox.tasks = []
                }
                if proposals.isEmpty && inbox.messages.isEmpty && inbox.tasks.isEmpty { inbox.scheduled = false }
                return (proposals, inbox.messages, inbox.tasks, holdUntil)
            }
            if let holdUntil {
                queue.after(holdUntil - now) { self.releaseHeldProposals() }
            }
            for task in tasks { task() }
            if !messages.isEmpty {
                let incarnations = liveness.withLock { $0.mapValues(\.incarnation) }
                for (id, message) in messages { step(message, into: id, incarnations: incarnations) }
            }
            var byGroup: [UInt32: [(data: [UInt8], waiter: Waiter)]] = [:]
            for proposal in proposals { byGroup[proposal.group, default: []].append((proposal.data, proposal.waiter)) }
            for (id, batch) in byGroup { propose(batch, to: id) }
            let worked = processReadies()
            if !worked && proposals.isEmpty && messages.isEmpty && tasks.isEmpty {
                // Nothing arrived and nothing was ready: the inbox was marked idle above.
                if inbox.withLock({ !$0.scheduled }) { return }
            }
        }
    }

    /// Held proposals may go now (the round they waited for was applied, or their window is over).
    func releaseHeldProposals() {
        let schedule = inbox.withLock { inbox in inbox.hold != nil && scheduleLocked(&inbox) }
        if schedule { queue.async { self.runRound() } }
    }

    func step(_ message: Message, into id: UInt32, incarnations: [UInt64: UInt64]) {
        let group: Group
        if let existing = groups[id] {
            group = existing
        } else {
            guard !destroying.contains(id) else { return }
            // A leader replicates a group to this node: it starts empty and catches up (snapshot, then log).
            guard [.app, .snap, .heartbeat].contains(message.type) else { return }
            do {
                group = try openGroup(id)
            } catch {
                logger.error("cannot create group", metadata: ["raft.group": "\(id)", "error": "\(error)"])
                return
            }
            groups[id] = group
            logger.notice("replicating a new group", metadata: ["raft.group": "\(id)", "raft.from": "\(message.from)"])
            for (context, request) in awaitingReplica.removeValue(forKey: id) ?? [:] {
                group.readRequests[context] = request
            }
        }
        if message.from == group.node.softState.lead, [.app, .heartbeat, .snap].contains(message.type) {
            group.leaderContactTick = ticks
        }
        if [.preVote, .vote].contains(message.type) {
            // Another member campaigns: it has not heard from the leader. This replica's belief in its leader may
            // be stale too (a frame queued while this node was down can make it follow a node that no longer
            // leads the group), so it stops relying on that node's liveness and ticks until the leader is heard
            // from again — otherwise it would stay in its lease forever and refuse every vote.
            group.leaderIncarnation = 0
        }
        if ![.heartbeatResp, .appResp].contains(message.type) {
            // Anything but the answers to its own traffic wakes a quiet leader (a vote, a read, a transfer).
            group.quietTicks = 0
        }
        do { try group.node.step(message) } catch {
            logger.debug("raft step refused", metadata: ["raft.group": "\(id)", "error": "\(error)"])
        }
        if [.app, .heartbeat, .snap].contains(message.type), group.node.softState.lead == message.from {
            // The sender leads the group in this replica's term: remember which incarnation of its node that is.
            group.leaderIncarnation = incarnations[message.from] ?? 0
        }
    }

    func propose(_ batch: [(data: [UInt8], waiter: Waiter)], to id: UInt32) {
        guard let group = groups[id] else {
            let error = ClusterError(.unavailable, "this node does not replicate group \(id)")
            for proposal in batch { proposal.waiter(.failure(error)) }
            return
        }
        let soft = group.node.softState
        guard soft.role == .leader else {
            let error = ClusterError(
                .unavailable,
                "node \(nodeID) does not lead group \(id)",
                leaderHint: soft.lead == noneNode ? nil : soft.lead
            )
            for proposal in batch { proposal.waiter(.failure(error)) }
            return
        }
        let firstIndex = group.node.lastIndex + 1
        let term = group.node.hardState.term
        do {
            try group.node.proposeBatch(batch.map(\.data))
        } catch {
            let failure = ClusterError(.unavailable, error.message, leaderHint: error.leaderHint)
            for proposal in batch { proposal.waiter(.failure(failure)) }
            return
        }
        for (offset, proposal) in batch.enumerated() {
            group.waiting[firstIndex + UInt64(offset)] = (term, proposal.waiter)
        }
    }

    /// Persists every group's Ready in one batch (one fsync when anything must be durable) — a leader's appends
    /// and heartbeats leave just before it — then advances, sends the other messages, and hands the round's
    /// committed entries to the apply queue. Returns false when no group had anything to do.
    func processReadies() -> Bool {
        var readies: [(group: Group, ready: Ready)] = []
        var jobs: [(applier: Applier, job: ApplyJob)] = []
        let batch = WriteBatch()
        var sync = false
        // A leader's appends and heartbeats in a term whose vote is stored leave before the round's write, so that
        // the followers write the entries while this node does (``Ready/replicatesBeforeWrite``); the answers they
        // send are stepped in a later round, after this write.
        var early: [UInt64: RaftBatchRecord] = [:]
        let candidates = noted
        noted = []
        for group in candidates {
            group.isNoted = false  // driving its node from here on notes it again
            guard groups[group.id] === group, group.node.hasReady else { continue }
            let ready = group.node.ready()
            group.log.stage(ready, into: batch)
            // Only new entries, a new term or vote, and snapshots must be synced before the other messages are sent
            // or anything is acknowledged; a round that only commits needs no fsync.
            sync = sync || ready.mustSync || ready.snapshot != nil
            readies.append((group, ready))
            if let job = handOff(ready, of: group) { jobs.append((group.applier, job)) }
            Self.add(ready.messagesBeforeWrite, of: group.id, to: &early)
        }
        if readies.isEmpty { return false }
        send(early)
        do {
            try database.write(batch, sync: sync)
        } catch {
            for (_, job) in jobs { Applier.fail(job, error) }
            storageFailed(error)
            return false
        }
        if sync { syncedBatches.add(1, ordering: .relaxed) }
        // The entries are on disk: they may be applied — off the scheduler, so that no group's apply holds up
        // the next rounds of the others.
        if !jobs.isEmpty {
            let round = jobs
            applyRounds.withLock { $0.queued += 1 }
            applyQueue.async {
                self.apply(round)
                self.applyRounds.withLock { $0.done += 1 }
                self.releaseHeldProposals()
            }
        }
        var outgoing: [UInt64: RaftBatchRecord] = [:]
        // Snapshots go on their own, in the background: a large one must not hold up the round's other messages.
        var snapshots: [(peer: UInt64, batch: RaftBatchRecord)] = []
        var destroyed: [Group] = []
        for (group, ready) in readies {
            group.node.advance(ready)
            for message in ready.messagesAfterWrite {
                let record = Self.record(message, of: group.id)
                guard message.type == .snap else {
                    outgoing[message.to, default: RaftBatchRecord()].messages.append(record)
                    continue
                }
                let peer = message.to
                var batch = RaftBatchRecord()
                batch.messages = [record]
                batch.incarnation = incarnation
                snapshots.append((peer, batch))
                group.snapshotHold = (message.snapshot?.metadata.index ?? 0, ticks)
                enqueue { [weak group] in group?.node.reportSnapshot(peer, succeeded: true) }
            }
        }
        send(outgoing)
        if let transport {
            for (peer, batch) in snapshots { transport.sendInBackground(batch, to: peer) }
        }
        for (group, ready) in readies {
            if let soft = ready.softState { roleChanged(group, soft) }
            for state in ready.readStates {
                let context = state.requestContext.reduce(0) { $0 << 8 | UInt64($1) }
                guard let request = group.readRequests.removeValue(forKey: context) else { continue }
                group.applier.whenApplied(state.index, request.completion)
            }
            let conf = group.node.confState
            let member = conf.voters.contains(nodeID) || conf.learners.contains(nodeID)
            if member { group.wasMember = true } else if group.wasMember { destroyed.append(group) }
        }
        for group in destroyed { destroy(group) }
        return true
    }

    /// Adds a group's `messages` to the batches for their peers, in order.
    static func add(_ messages: [Message], of group: UInt32, to batches: inout [UInt64: RaftBatchRecord]) {
        for message in messages {
            batches[message.to, default: RaftBatchRecord()].messages.append(record(message, of: group))
        }
    }

    /// Sends each peer its batch of the round, stamped with this node's incarnation (one frame per peer).
    func send(_ batches: [UInt64: RaftBatchRecord]) {
        guard let transport else { return }
        for (peer, var batch) in batches {
            batch.incarnation = incarnation
            transport.send(batch, to: peer)
        }
    }

    static func record(_ message: Message, of group: UInt32) -> Warbler_Peer_V1_GroupMessage {
        var record = Warbler_Peer_V1_GroupMessage()
        record.group = group
        record.message = Warbler_Raft_V1_Message(message)
        return record
    }

    /// Applies one round's committed entries (on the apply queue, in round order): the groups' together, in
    /// batches of at most ``Options/applyChunkEntries`` entries, each answered once it is written. Batches are
    /// written without fsync (the scheduler synced the entries: RocksDB's write-ahead log replays in order, so
    /// state can lag the log after a crash, never lead it; a restart replays from the stored applied index).
    /// Heavy work — a snapshot to install, a large catch-up — goes to the group's own queue, with the group's
    /// later jobs until it is done, so it holds up no other group's apply either.
    func apply(_ jobs: [(applier: Applier, job: ApplyJob)]) {
        var batch = WriteBatch()
        var staged: [(applier: Applier, staged: Applier.Staged)] = []
        var entries = 0
        let limit = options.applyChunkEntries
        for (applier, job) in jobs {
            if applier.isDetached || Applier.isHeavy(job) {
                applier.detach(job)
                continue
            }
            // A group's pieces never share a batch (each but the last fills one), so each stages on the state
            // the one before wrote.
            for piece in job.pieces(of: limit) {
                if entries > 0, entries + piece.entries.count > limit {
                    write(batch, staged)
                    batch = WriteBatch()
                    staged = []
                    entries = 0
                }
                if let item = applier.stage(piece, into: batch, host: self) {
                    staged.append((applier, item))
                    entries += piece.entries.count
                }
            }
        }
        write(batch, staged)
    }

    /// Writes one apply batch (without fsync) and completes what it holds; when the write fails, their appliers
    /// fail.
    func write(_ batch: WriteBatch, _ staged: [(applier: Applier, staged: Applier.Staged)]) {
        guard !staged.isEmpty else { return }
        do {
            try database.write(batch, sync: false)
        } catch {
            for (applier, item) in staged { applier.failed(error, item, host: self) }
            return
        }
        completionScope { for (applier, item) in staged { applier.finish(item, host: self) } }
    }

    /// What the group's applier must do with a Ready's snapshot and committed entries (on disk now), with their
    /// proposers.
    func handOff(_ ready: Ready, of group: Group) -> ApplyJob? {
        let snapshot = ready.snapshot.flatMap { $0.isEmpty ? nil : $0 }
        guard snapshot != nil || !ready.committedEntries.isEmpty else { return nil }
        var waiters: [UInt64: Waiter] = [:]
        for entry in ready.committedEntries {
            guard let waiting = group.waiting.removeValue(forKey: entry.index) else { continue }
            if waiting.term == entry.term {
                waiters[entry.index] = waiting.waiter
            } else {
                waiting.waiter(.failure(ClusterError(.outcomeUnknown, "entry \(entry.index) was replaced")))
            }
        }
        return ApplyJob(snapshot: snapshot, entries: ready.committedEntries, waiters: waiters)
    }

    /// A write that may or may not be on disk leaves the logs in an unknown state: stop the node's groups.
    func storageFailed(_ error: any Error) {
        guard !failed else { return }
        logger.critical("storage failed; stopping every group", metadata: ["error": "\(error)"])
        failed = true
        timer?.cancel()
        for group in groups.values { failAll(group, error) }
        failReadsAwaitingReplicas(error)
        inbox.withLock { $0.stopped = true }
    }

    func roleChanged(_ group: Group, _ soft: SoftState) {
        published.withLock { $0.leaders[group.id] = soft.lead }
        logger.log(
            level: group.id == 0 || soft.role == .leader ? .info : .debug,
            "group leader changed",
            metadata: [
                "raft.group": "\(group.id)", "raft.role": "\(soft.role.rawValue)", "raft.leader": "\(soft.lead)",
                "raft.term": "\(group.node.hardState.term)",
            ]
        )
        if soft.role != .leader {
            let error = ClusterError(.outcomeUnknown, "leadership of group \(group.id) was lost")
            let waiters = group.waiting
            group.waiting = [:]
            for waiter in waiters.values { waiter.waiter(.failure(error)) }
        }
    }

    /// Hands a read to Raft; without a known leader it stays pending and is tried again on later ticks (a
    /// node that just restarted learns its leaders within a heartbeat or an election).
    func issueRead(_ context: UInt64, in group: Group) {
        var bytes: [UInt8] = []
        appendBigEndian(context, to: &bytes)
        guard (try? group.node.readIndex(context: bytes)) != nil else { return }
        group.readRequests[context]?.issuedAt = max(ticks, 1)
    }

    func expireReads(_ group: Group) {
        for (context, request) in group.readRequests {
            if request.deadline <= ticks {
                group.readRequests.removeValue(forKey: context)
                request.completion(
                    .failure(ClusterError(.unavailable, "group \(group.id) confirmed no leader in time"))
                )
            } else if request.issuedAt == 0 || ticks - request.issuedAt >= 10 {
                // Not issued yet, or its answer was lost with a leader change: ask again (same context).
                issueRead(context, in: group)
            }
        }
    }

    func expireReadsAwaitingReplicas() {
        for (id, requests) in awaitingReplica {
            for (context, request) in requests where request.deadline <= ticks {
                awaitingReplica[id]?.removeValue(forKey: context)
                request.completion(.failure(ClusterError(.unavailable, "this node does not replicate group \(id)")))
            }
            if awaitingReplica[id]?.isEmpty == true { awaitingReplica.removeValue(forKey: id) }
        }
    }

    func failReadsAwaitingReplicas(_ error: any Error) {
        let reads = awaitingReplica.values.flatMap(\.values)
        awaitingReplica = [:]
        for read in reads { read.completion(.failure(error)) }
    }

    func failAll(_ group: Group, _ error: any Error) {
        let waiters = group.waiting
        group.waiting = [:]
        for waiter in waiters.values { waiter.waiter(.failure(error)) }
        let reads = group.readRequests
        group.readRequests = [:]
        for read in reads.values { read.completion(.failure(error)) }
        group.applier.failReads(error)
    }

    /// This node left `group`: its replica is deleted once its applier finished what it was given.
    func destroy(_ group: Group) {
        failAll(group, ClusterError(.unavailable, "this node left group \(group.id)"))
        groups.removeValue(forKey: group.id)
        destroying.insert(group.id)
        published.withLock { _ = $0.leaders.removeValue(forKey: group.id) }
        // After the apply queue and the group's own queue finished what they were given.
        let applier = group.applier
        applyQueue.async {
            applier.destroy { deleted in
                self.enqueue {
                    self.destroying.remove(group.id)
                    if deleted {
                        self.logger.notice(
                            "left a group; its replica here is deleted",
                            metadata: ["raft.group": "\(group.id)"]
                        )
                    }
                }
            }
        }
    }

    func publishView() {
        published.withLock { $0.view = view }
        guard let transport else { return }
        if let id = view.info?.clusterID { transport.setClusterID(id) }
        for node in view.nodes.values where node.state != .removed {
            transport.setAddress(node.peerAddress, for: node.nodeID)
        }
    }

}
