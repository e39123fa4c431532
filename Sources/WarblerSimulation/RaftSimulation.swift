import Foundation
import WarblerRaft
import WarblerStorage

/// What a simulation run does. Every random choice derives from ``seed``.
public struct SimulationOptions: Sendable, Hashable {
    /// Seed of every random choice: the same options replay the same run exactly.
    public var seed: UInt64
    /// Initial voters (3 or 5 in CI).
    public var nodes: Int
    /// Simulated time steps.
    public var steps: Int
    /// Concurrent simulated clients.
    public var clients: Int = 3
    /// Whether network faults, crashes, pauses, partitions and membership changes are injected.
    public var faults: Bool = true
    /// Print every role change, fault and membership change as it happens (for replaying a failing seed).
    public var trace: Bool = false
    /// Where nodes keep their Raft logs.
    public var storage: StorageKind = .memory

    /// Where nodes keep their Raft logs.
    public enum StorageKind: String, Sendable, Hashable {
        /// `MemoryStorage`.
        case memory
        /// Warbler's `RaftLogStore`, one group per node in one RocksDB database in a temporary directory.
        case rocksdb
    }

    /// Creates options with every fault enabled.
    public init(seed: UInt64, nodes: Int, steps: Int) {
        self.seed = seed
        self.nodes = nodes
        self.steps = steps
    }
}

/// What a run observed.
public struct SimulationReport: Sendable {
    public var options: SimulationOptions
    /// Client values committed (distinct log entries carrying data).
    public var commits: Int
    /// Distinct (term, leader) pairs observed.
    public var leaderChanges: Int
    /// Faults injected, by kind.
    public var faults: [String: Int]
    /// Invariant violations (empty when the run is correct).
    public var violations: [String]
    /// The client history.
    public var history: [HistoryEvent]

    /// True when every invariant held and the client history checks out.
    public var passed: Bool { violations.isEmpty }

    /// One line: seed, steps, commits, leader changes, faults, verdict.
    public var summary: String {
        let storageText = options.storage == .memory ? "" : " storage=\(options.storage.rawValue)"
        let faultText = faults.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        let verdict = passed ? "ok" : "FAILED (\(violations.count) violations)"
        return "seed=\(options.seed) nodes=\(options.nodes) steps=\(options.steps)\(storageText) commits=\(commits) "
            + "leader_changes=\(leaderChanges) reads=\(history.filter { $0.f == .read && $0.type == .ok }.count) "
            + "faults: \(faultText) => \(verdict)"
    }
}

/// A deterministic simulation of one Raft group under faults, checking Raft's safety properties after every
/// step and the clients' history at the end.
///
/// Time advances in steps. Each node ticks every ``ticksPerStep`` steps; messages take 1–8 steps (sometimes far
/// longer) and may be dropped, duplicated or reordered; nodes crash (losing every write not yet persisted),
/// restart, pause and resume; the network partitions and heals; members are added as learners, promoted and
/// removed (including the leader).
public final class RaftSimulation {
    struct Node {
        let id: NodeID
        var raw: RawNode?
        var log: any SimulatedLog
        var storage: any RaftStorage { log.storage }
        var config: Config
        /// The application state: every applied client value, in log order.
        var values: [Int] = []
        var appliedIndex: UInt64 = 0
        /// A Ready taken from the node but not yet persisted (lost if the node crashes), and the term then.
        var pendingReady: Ready?
        var pendingTerm: UInt64 = 0
        var pausedUntil = 0
        var restartAt = 0
        /// Removed from the group and shut down for good.
        var retired = false
        var lastHardState = HardState()
        /// (term, last index) while this node leads: a leader never overwrites its own log.
        var leaderTail: (term: UInt64, last: UInt64)?
    }

    struct InFlight {
        var deliverAt: Int
        var message: Message
    }

    enum ClientOp {
        case idle
        case append(value: Int, node: NodeID, deadline: Int)
        case read(context: [UInt8], node: NodeID, deadline: Int, readIndex: UInt64?)
    }

    let options: SimulationOptions
    let ticksPerStep = 4
    private var random: SplitMix64
    private var now = 0
    private var nodes: [NodeID: Node] = [:]
    private var network: [InFlight] = []
    private var partition: (sides: [Set<NodeID>], until: Int)?
    private var clients: [ClientOp]
    private var nextValue = 1
    private var nextContext: UInt64 = 1
    private var history: [HistoryEvent] = []
    private var violations: [String] = []
    private var faults: [String: Int] = [:]
    /// Every committed entry seen applied anywhere: index -> (term, data).
    /// `maxTerm` is the highest term any node had when the entry was first seen applied: it was committed in a
    /// term no later than that.
    private var committed: [UInt64: (term: UInt64, data: [UInt8], maxTerm: UInt64)] = [:]
    private var leaders: [UInt64: NodeID] = [:]
    private var nextNodeID: NodeID
    /// The next membership step: add a learner, promote it, remove an old member.
    private var membershipPlan: [ConfChange] = []
    /// How hard this run is hit: a multiplier of the fault rates drawn per seed (1, 3 or 8).
    private var intensity: Double = 1

    /// Prepares a run.
    public init(options: SimulationOptions) {
        self.options = options
        random = SplitMix64(seed: options.seed)
        intensity = [1.0, 3.0, 8.0][Int(random.next() % 3)]
        clients = Array(repeating: .idle, count: options.clients)
        let voters = Set((1...options.nodes).map { NodeID($0) })
        nextNodeID = NodeID(options.nodes + 1)
        if options.storage == .rocksdb {
            let path = NSTemporaryDirectory() + "warbler-sim-\(options.seed)-\(UUID().uuidString)"
            var databaseOptions = Database.Options()
            databaseOptions.columnFamilies = ["raft"]
            databaseOptions.writeBufferSize = 1 << 20
            databaseOptions.backgroundThreads = 1
            database = try! Database(path: path, options: databaseOptions)
            databasePath = path
        }
        for id in voters.sorted() {
            let log = makeLog(id, bootstrap: ConfState(voters: voters))
            nodes[id] = Node(id: id, log: log, config: makeConfig(id))
            nodes[id]!.raw = try! RawNode(config: nodes[id]!.config, storage: log.storage)
            nodes[id]!.appliedIndex = 1
        }
    }

    deinit {
        nodes = [:]
        database = nil
        if let databasePath { try? FileManager.default.removeItem(atPath: databasePath) }
    }

    private var database: Database?
    private var databasePath: String?

    private func makeLog(_ id: NodeID, bootstrap confState: ConfState?) -> any SimulatedLog {
        switch options.storage {
        case .memory:
            return InMemoryLog(confState.map { MemoryStorage(bootstrap: $0, index: 1, term: 1) } ?? MemoryStorage())
        case .rocksdb:
            let family = try! database!.columnFamily("raft")
            return try! RocksDBLog(database: database!, family: family, group: UInt32(id), bootstrap: confState)
        }
    }

    private func makeConfig(_ id: NodeID) -> Config {
        var config = Config(id: id)
        config.electionTick = 10
        config.heartbeatTick = 1
        config.randomSeed = options.seed &* 31 &+ id
        config.maxSizePerMsg = 64
        config.maxInflightMsgs = 8
        config.maxUncommittedEntriesSize = 4096
        return config
    }

    private func chance(_ probability: Double) -> Bool {
        Double(random.next() % 1_000_000) / 1_000_000 < probability
    }

    private func uniform(_ range: ClosedRange<Int>) -> Int {
        range.lowerBound + Int(random.next() % UInt64(range.count))
    }

    private func count(_ fault: String) { faults[fault, default: 0] += 1 }

    private func fail(_ text: String) {
        violations.append("step \(now): \(text)")
        log("VIOLATION \(text)")
    }

    private func log(_ text: @autoclosure () -> String) {
        if options.trace { print("[\(now)] \(text())") }
    }

    private var liveIDs: [NodeID] { nodes.keys.sorted().filter { nodes[$0]!.raw != nil && !nodes[$0]!.retired } }

    // MARK: - Run

    /// Runs every step, then lets the cluster heal and settle, and checks the client history.
    public func run() -> SimulationReport {
        for _ in 0..<options.steps {
            step(faultsEnabled: options.faults)
            if violations.count > 20 { break }
        }
        // Heal everything and let outstanding operations finish, so the history has few unknowns.
        partition = nil
        for id in nodes.keys.sorted() where !nodes[id]!.retired {
            nodes[id]!.pausedUntil = 0
            if nodes[id]!.raw == nil { restart(id) }
        }
        for _ in 0..<600 where violations.count <= 20 { step(faultsEnabled: false, newOperations: false) }
        for process in clients.indices { finishUnknown(process) }
        checkLogMatching()
        for violation in HistoryChecker.check(history) { violations.append("history: \(violation)") }
        let leaderChanges = Set(leaders.map { "\($0.key)/\($0.value)" }).count
        let commits = committed.values.filter { !$0.data.isEmpty }.count
        return SimulationReport(
            options: options,
            commits: commits,
            leaderChanges: leaderChanges,
            faults: faults,
            violations: violations,
            history: history
        )
    }

    private func step(faultsEnabled: Bool, newOperations: Bool = true) {
        now += 1
        if faultsEnabled { injectFaults() }
        if let current = partition, current.until <= now { partition = nil }
        for id in nodes.keys.sorted() where nodes[id]!.retired == false {
            if nodes[id]!.raw == nil && nodes[id]!.restartAt != 0 && nodes[id]!.restartAt <= now { restart(id) }
        }
        // Ticks, staggered by node.
        for id in liveIDs where !isPaused(id) && (now + Int(id)) % ticksPerStep == 0 { nodes[id]!.raw!.tick() }
        deliverMessages(faultsEnabled: faultsEnabled)
        for id in liveIDs where !isPaused(id) { handleReady(id, faultsEnabled: faultsEnabled) }
        runClients(newOperations: newOperations)
        if faultsEnabled || !membershipPlan.isEmpty { driveMembership(faultsEnabled: faultsEnabled) }
        checkStepInvariants()
        if now % 50 == 0 { checkLogMatching() }
    }

    private func isPaused(_ id: NodeID) -> Bool { nodes[id]!.pausedUntil > now }

    // MARK: - Network

    private func send(_ message: Message, faultsEnabled: Bool) {
        if faultsEnabled && chance(0.03) {
            count("drop")
            dropped(message)
            return
        }
        var delay = uniform(1...8)
        if faultsEnabled && chance(0.01) {
            delay = uniform(20...120)
            count("delay")
        }
        network.append(InFlight(deliverAt: now + delay, message: message))
        if faultsEnabled && chance(0.02) {
            count("duplicate")
            network.append(InFlight(deliverAt: now + uniform(1...30), message: message))
        }
    }

    /// What a transport would report when a message is lost.
    private func dropped(_ message: Message) {
        guard let sender = nodes[message.from], sender.raw != nil else { return }
        if message.type == .snap {
            nodes[message.from]!.raw!.reportSnapshot(message.to, succeeded: false)
        } else if message.type == .app && chance(0.3) {
            nodes[message.from]!.raw!.reportUnreachable(message.to)
        }
    }

    private func canTalk(_ a: NodeID, _ b: NodeID) -> Bool {
        guard let sides = partition?.sides else { return true }
        return sides.contains { $0.contains(a) && $0.contains(b) }
    }

    private func deliverMessages(faultsEnabled: Bool) {
        var due: [Message] = []
        var remaining: [InFlight] = []
        for flight in network {
            if flight.deliverAt > now {
                remaining.append(flight)
            } else if let target = nodes[flight.message.to], target.raw != nil, target.pausedUntil > now {
                // A paused process does not read its socket: the message waits.
                remaining.append(InFlight(deliverAt: target.pausedUntil, message: flight.message))
            } else {
                due.append(flight.message)
            }
        }
        network = remaining
        // Deliver in a random order: reordering.
        for position in due.indices.reversed() where position > 0 {
            due.swapAt(position, uniform(0...position))
        }
        for message in due {
            guard canTalk(message.from, message.to), let target = nodes[message.to], target.raw != nil,
                !target.retired
            else {
                dropped(message)
                continue
            }
            if message.type == .vote || message.type == .timeoutNow { log("deliver \(message)") }
            try? nodes[message.to]!.raw!.step(message)
            if message.type == .snap, nodes[message.from]?.raw != nil {
                nodes[message.from]!.raw!.reportSnapshot(message.to, succeeded: true)
            }
        }
    }

    // MARK: - Ready handling

    private func handleReady(_ id: NodeID, faultsEnabled: Bool) {
        if nodes[id]!.pendingReady == nil {
            guard nodes[id]!.raw!.hasReady else { return }
            let ready = nodes[id]!.raw!.ready()
            nodes[id]!.pendingReady = ready
            nodes[id]!.pendingTerm = nodes[id]!.raw!.hardState.term
            // A leader's appends and heartbeats leave before its own write, as the node runtime sends them.
            for message in ready.messagesBeforeWrite { send(message, faultsEnabled: faultsEnabled) }
            // Sometimes the fsync takes a while: the Ready stays unpersisted and a crash would lose it.
            if faultsEnabled && chance(0.3) { return }
        }
        let ready = nodes[id]!.pendingReady!
        let term = nodes[id]!.pendingTerm
        nodes[id]!.pendingReady = nil
        persist(id, ready, term: term)
        for message in ready.messagesAfterWrite { send(message, faultsEnabled: faultsEnabled) }
        apply(id, ready)
        nodes[id]!.raw!.advance(ready)
        if let soft = ready.softState { observeSoftState(id, soft, term: term) }
        maybeCompact(id)
    }

    private func persist(_ id: NodeID, _ ready: Ready, term: UInt64) {
        if let first = ready.entries.first {
            // Leader append-only: a leader never rewrites entries it has.
            if let tail = nodes[id]!.leaderTail, tail.term == term, first.index <= tail.last {
                fail("leader \(id) of term \(tail.term) overwrote its log at \(first.index) (last \(tail.last))")
            }
        }
        do { try nodes[id]!.log.persist(ready) } catch { fail("node \(id) cannot persist: \(error)") }
        if let hard = ready.hardState {
            let previous = nodes[id]!.lastHardState
            if hard.term < previous.term { fail("node \(id) term went back from \(previous.term) to \(hard.term)") }
            if hard.commit < previous.commit {
                fail("node \(id) commit went back from \(previous.commit) to \(hard.commit)")
            }
            if hard.term == previous.term && previous.vote != noneNode && hard.vote != previous.vote {
                fail("node \(id) changed its vote in term \(hard.term)")
            }
            nodes[id]!.lastHardState = hard
        }
        if let last = ready.entries.last, let tail = nodes[id]!.leaderTail, tail.term == term {
            nodes[id]!.leaderTail = (term, last.index)
        }
    }

    private func apply(_ id: NodeID, _ ready: Ready) {
        if let snapshot = ready.snapshot {
            nodes[id]!.values = decodeValues(snapshot.data)
            nodes[id]!.appliedIndex = snapshot.metadata.index
            count("snapshot_installed")
        }
        for entry in ready.committedEntries {
            if entry.index != nodes[id]!.appliedIndex + 1 {
                fail("node \(id) applied \(entry.index) after \(nodes[id]!.appliedIndex)")
            }
            nodes[id]!.appliedIndex = entry.index
            // State machine safety: every node applies the same entry at each index.
            if let known = committed[entry.index] {
                if known.term != entry.term || known.data != entry.data {
                    fail(
                        "node \(id) applied \(entry.term)/\(entry.index), but \(known.term)/\(entry.index) was applied elsewhere"
                    )
                }
            } else {
                committed[entry.index] = (entry.term, entry.data, highestTerm())
            }
            if entry.kind == .normal && entry.data.count == 8 { nodes[id]!.values.append(decodeValue(entry.data)) }
            if entry.kind == .confChange { log("node \(id) applies \(entry)") }
        }
        for state in ready.readStates { readConfirmed(id, state) }
    }

    /// Checks a role change reported by a Ready taken when the node's term was `term`.
    private func highestTerm() -> UInt64 {
        var highest: UInt64 = 0
        for node in nodes.values {
            highest = max(highest, node.lastHardState.term, node.raw?.hardState.term ?? 0)
        }
        return highest
    }

    private func observeSoftState(_ id: NodeID, _ soft: SoftState, term: UInt64) {
        log("node \(id) is \(soft.role.rawValue) term=\(term) lead=\(soft.lead) conf=\(nodes[id]!.raw!.confState)")
        guard soft.role == .leader else { return }
        if let other = leaders[term], other != id { fail("election safety: \(other) and \(id) both lead term \(term)") }
        leaders[term] = id
        // What the leader has persisted (its log may hold newer, unpersisted proposals already).
        nodes[id]!.leaderTail = (term, (try? nodes[id]!.storage.lastIndex()) ?? 0)
        checkLeaderCompleteness(id, term: term)
    }

    /// Leader completeness: the (persisted) log of a new leader of `term` holds every entry committed in an
    /// earlier term. An entry counts when no node had reached `term` yet when it was first applied.
    private func checkLeaderCompleteness(_ id: NodeID, term leaderTerm: UInt64) {
        let storage = nodes[id]!.storage
        let snapshotIndex = (try? storage.snapshot().metadata.index) ?? 0
        for (index, entry) in committed where index > snapshotIndex && entry.maxTerm < leaderTerm {
            guard let term = try? storage.term(at: index) else {
                fail("leader completeness: leader \(id) lacks committed entry \(index)")
                continue
            }
            if term != entry.term {
                fail("leader completeness: leader \(id) has term \(term) at committed \(index), expected \(entry.term)")
            }
        }
    }

    private func maybeCompact(_ id: NodeID) {
        let node = nodes[id]!
        guard let raw = node.raw, let snapshotIndex = try? node.storage.snapshot().metadata.index else { return }
        // Snapshot every 40 applied entries (a follower that lags behind it gets the snapshot).
        guard node.appliedIndex >= snapshotIndex + 40 else { return }
        do {
            try node.log.compact(at: node.appliedIndex, confState: raw.confState, data: encodeValues(node.values))
            count("compaction")
        } catch {
            fail("node \(id) cannot compact: \(error)")
        }
    }

    // MARK: - Clients

    private func runClients(newOperations: Bool) {
        for process in clients.indices {
            switch clients[process] {
            case .idle:
                guard newOperations, chance(0.25), let node = pickNode() else { continue }
                if chance(0.7) { startAppend(process, node) } else { startRead(process, node) }
            case .append(let value, let node, let deadline):
                if let index = appliedIndex(of: value, on: node) {
                    history.append(
                        HistoryEvent(process: process, type: .ok, f: .append, value: .single(value), index: index)
                    )
                    clients[process] = .idle
                } else if nodes[node]!.raw == nil || deadline <= now {
                    history.append(HistoryEvent(process: process, type: .info, f: .append, value: .single(value)))
                    clients[process] = .idle
                }
            case .read(_, let node, let deadline, let readIndex):
                if let readIndex, nodes[node]!.raw != nil, nodes[node]!.appliedIndex >= readIndex {
                    let values = nodes[node]!.values
                    history.append(
                        HistoryEvent(
                            process: process,
                            type: .ok,
                            f: .read,
                            value: .list(values),
                            index: nodes[node]!.appliedIndex
                        )
                    )
                    clients[process] = .idle
                } else if nodes[node]!.raw == nil || deadline <= now {
                    history.append(HistoryEvent(process: process, type: .fail, f: .read, value: .none))
                    clients[process] = .idle
                }
            }
        }
    }

    /// Clients mostly find the leader (as a real client follows redirects), sometimes ask any node.
    private func pickNode() -> NodeID? {
        let live = liveIDs.filter { !isPaused($0) }
        guard !live.isEmpty else { return nil }
        if chance(0.8), let leader = live.first(where: { nodes[$0]!.raw!.softState.role == .leader }) { return leader }
        return live[uniform(0...(live.count - 1))]
    }

    private func startAppend(_ process: Int, _ node: NodeID) {
        let value = nextValue
        nextValue += 1
        history.append(HistoryEvent(process: process, type: .invoke, f: .append, value: .single(value)))
        do {
            try nodes[node]!.raw!.propose(encodeValue(value))
            clients[process] = .append(value: value, node: node, deadline: now + 400)
        } catch {
            // A rejected proposal was never appended anywhere.
            history.append(HistoryEvent(process: process, type: .fail, f: .append, value: .single(value)))
        }
    }

    private func startRead(_ process: Int, _ node: NodeID) {
        var context: [UInt8] = []
        for shift in stride(from: 56, through: 0, by: -8) {
            context.append(UInt8(truncatingIfNeeded: nextContext >> UInt64(shift)))
        }
        nextContext += 1
        history.append(HistoryEvent(process: process, type: .invoke, f: .read, value: .none))
        do {
            try nodes[node]!.raw!.readIndex(context: context)
            clients[process] = .read(context: context, node: node, deadline: now + 300, readIndex: nil)
        } catch {
            history.append(HistoryEvent(process: process, type: .fail, f: .read, value: .none))
        }
    }

    private func readConfirmed(_ id: NodeID, _ state: ReadState) {
        for process in clients.indices {
            if case .read(let context, let node, let deadline, nil) = clients[process], node == id,
                context == state.requestContext
            {
                clients[process] = .read(context: context, node: node, deadline: deadline, readIndex: state.index)
            }
        }
    }

    private func appliedIndex(of value: Int, on node: NodeID) -> UInt64? {
        guard nodes[node]!.raw != nil, nodes[node]!.values.contains(value) else { return nil }
        let data = encodeValue(value)
        return committed.first { $0.value.data == data }?.key
    }

    private func finishUnknown(_ process: Int) {
        switch clients[process] {
        case .idle: break
        case .append(let value, _, _):
            history.append(HistoryEvent(process: process, type: .info, f: .append, value: .single(value)))
        case .read:
            history.append(HistoryEvent(process: process, type: .fail, f: .read, value: .none))
        }
        clients[process] = .idle
    }

    // MARK: - Faults

    /// The node faults most often pick: the leader, whose loss exercises elections and log repair.
    private func pickVictim(_ live: [NodeID]) -> NodeID {
        if chance(0.5), let leader = live.first(where: { nodes[$0]!.raw?.softState.role == .leader }) { return leader }
        return live[uniform(0...(live.count - 1))]
    }

    private func injectFaults() {
        let live = liveIDs
        let down = nodes.values.filter { $0.raw == nil && !$0.retired }.count
        let members = nodes.values.filter { !$0.retired }.count
        let rate = intensity
        // Crash: keep a majority up so the run makes progress (safety is checked regardless).
        if chance(rate / 300), down < (members - 1) / 2, !live.isEmpty {
            let victim = pickVictim(live)
            crash(victim)
            nodes[victim]!.restartAt = now + uniform(10...200)
        }
        if chance(rate / 400), !liveIDs.isEmpty {
            let victim = pickVictim(liveIDs)
            nodes[victim]!.pausedUntil = now + uniform(20...200)
            count("pause")
            log("pause \(victim) until \(nodes[victim]!.pausedUntil)")
        }
        if partition == nil && chance(rate / 400) {
            var sides: [Set<NodeID>] = [[], []]
            if chance(0.5), !live.isEmpty {
                // Isolate one node (often the leader, which keeps taking proposals it cannot commit).
                let victim = pickVictim(live)
                for id in nodes.keys.sorted() { sides[id == victim ? 0 : 1].insert(id) }
            } else {
                for id in nodes.keys.sorted() { sides[uniform(0...1)].insert(id) }
            }
            partition = (sides, now + uniform(20...300))
            log("partition \(sides.map { $0.sorted() })")
            count("partition")
        }
        if membershipPlan.isEmpty && chance(1.0 / 600) { planMembershipChange() }
    }

    private func crash(_ id: NodeID) {
        log("crash \(id)")
        nodes[id]!.raw = nil
        nodes[id]!.pendingReady = nil
        nodes[id]!.leaderTail = nil
        network.removeAll { $0.message.to == id }
        count("crash")
    }

    private func restart(_ id: NodeID) {
        guard let reloaded = try? nodes[id]!.log.reopened(), let snapshot = try? reloaded.storage.snapshot() else {
            fail("node \(id) cannot reload its log")
            return
        }
        nodes[id]!.log = reloaded
        var config = nodes[id]!.config
        config.applied = snapshot.metadata.index
        do {
            nodes[id]!.raw = try RawNode(config: config, storage: reloaded.storage)
        } catch {
            fail("node \(id) cannot restart: \(error)")
            return
        }
        nodes[id]!.values = decodeValues(snapshot.data)
        nodes[id]!.appliedIndex = snapshot.metadata.index
        nodes[id]!.restartAt = 0
        count("restart")
        log(
            "restart \(id): \(nodes[id]!.raw!.hardState) conf=\(nodes[id]!.raw!.confState) last=\(nodes[id]!.raw!.lastIndex)"
        )
    }

    /// Plans: add a new learner, promote it, then remove a random old member (possibly the leader).
    private func planMembershipChange() {
        let newID = nextNodeID
        nextNodeID += 1
        let members = nodes.keys.sorted().filter { !nodes[$0]!.retired }
        let victim = members[uniform(0...(members.count - 1))]
        membershipPlan = [
            ConfChange(.addLearner, nodeID: newID),
            ConfChange(.addNode, nodeID: newID),
            ConfChange(.removeNode, nodeID: victim),
        ]
        count("conf_change")
    }

    private func driveMembership(faultsEnabled: Bool) {
        guard let change = membershipPlan.first,
            let leader = liveIDs.first(where: { nodes[$0]!.raw!.softState.role == .leader && !isPaused($0) })
        else { return }
        var raw = nodes[leader]!.raw!
        let confState = raw.confState
        // Done when the leader has applied the change.
        let applied: Bool
        switch change.kind {
        case .addLearner:
            applied = confState.learners.contains(change.nodeID) || confState.voters.contains(change.nodeID)
        case .addNode: applied = confState.voters.contains(change.nodeID)
        case .removeNode:
            applied = !confState.voters.contains(change.nodeID) && !confState.learners.contains(change.nodeID)
        }
        if applied {
            membershipPlan.removeFirst()
            if change.kind == .addLearner && nodes[change.nodeID] == nil { addNode(change.nodeID) }
            if change.kind == .removeNode { retireWhenApplied(change.nodeID) }
            return
        }
        if change.kind == .addLearner && nodes[change.nodeID] == nil { addNode(change.nodeID) }
        // Promote only a learner that has caught up.
        if change.kind == .addNode, let progress = raw.progress[change.nodeID], progress.match + 5 < raw.lastIndex {
            return
        }
        guard now % 20 == 0 else { return }
        do {
            try raw.proposeConfChange(change)
            log("leader \(leader) proposed \(change)")
        } catch {
            log("leader \(leader) refused \(change): \(error)")
        }
        nodes[leader]!.raw = raw
    }

    private func addNode(_ id: NodeID) {
        let log = makeLog(id, bootstrap: nil)
        var node = Node(id: id, log: log, config: makeConfig(id))
        node.raw = try! RawNode(config: node.config, storage: log.storage)
        nodes[id] = node
    }

    /// A removed node is shut down (as an operator would) once the removal is committed.
    private func retireWhenApplied(_ id: NodeID) {
        guard nodes[id] != nil else { return }
        log("retire \(id)")
        nodes[id]!.retired = true
        nodes[id]!.raw = nil
        nodes[id]!.pendingReady = nil
        network.removeAll { $0.message.to == id }
    }

    // MARK: - Invariants

    private func checkStepInvariants() {
        var leadersNow: [UInt64: NodeID] = [:]
        for id in liveIDs {
            let raw = nodes[id]!.raw!
            guard raw.softState.role == .leader else { continue }
            let term = raw.hardState.term
            if let other = leadersNow[term] { fail("election safety: \(other) and \(id) lead term \(term) at once") }
            leadersNow[term] = id
        }
        // Every node's applied values are a prefix of the longest.
        var longest: [Int] = []
        for id in nodes.keys.sorted() where nodes[id]!.values.count > longest.count { longest = nodes[id]!.values }
        for id in nodes.keys.sorted() {
            let values = nodes[id]!.values
            if longest[..<values.count] != values[...] { fail("node \(id) applied values diverge") }
        }
    }

    /// Log matching: if two logs have an entry with the same index and term, they are identical up to it.
    private func checkLogMatching() {
        let ids = nodes.keys.sorted().filter { !nodes[$0]!.retired }
        var logs: [NodeID: [UInt64: Entry]] = [:]
        for id in ids {
            let storage = nodes[id]!.storage
            guard let first = try? storage.firstIndex(), let last = try? storage.lastIndex(), last >= first,
                let entries = try? storage.entries(from: first, to: last + 1, maxSize: Int.max)
            else { continue }
            logs[id] = Dictionary(uniqueKeysWithValues: entries.map { ($0.index, $0) })
        }
        for a in ids {
            for b in ids where a < b {
                guard let logA = logs[a], let logB = logs[b] else { continue }
                var matched = false
                for index in logA.keys.sorted(by: >) {
                    guard let entryA = logA[index], let entryB = logB[index] else {
                        if matched { break } else { continue }
                    }
                    if matched && entryA != entryB {
                        fail("log matching: \(a) and \(b) agree on a later entry but differ at \(index)")
                        return
                    }
                    if entryA.term == entryB.term {
                        if entryA != entryB {
                            fail("log matching: \(a) and \(b) hold different entries \(entryA.term)/\(index)")
                        }
                        matched = true
                    }
                }
            }
        }
    }
}

func encodeValue(_ value: Int) -> [UInt8] {
    var bytes: [UInt8] = []
    for shift in stride(from: 56, through: 0, by: -8) {
        bytes.append(UInt8(truncatingIfNeeded: UInt64(value) >> UInt64(shift)))
    }
    return bytes
}

func decodeValue<C: Collection<UInt8>>(_ bytes: C) -> Int {
    var value: UInt64 = 0
    for byte in bytes { value = value << 8 | UInt64(byte) }
    return Int(value)
}

func encodeValues(_ values: [Int]) -> [UInt8] {
    var bytes: [UInt8] = []
    bytes.reserveCapacity(values.count * 8)
    for value in values { bytes.append(contentsOf: encodeValue(value)) }
    return bytes
}

func decodeValues(_ data: [UInt8]) -> [Int] {
    stride(from: 0, to: data.count, by: 8).map { decodeValue(data[$0..<min($0 + 8, data.count)]) }
}
