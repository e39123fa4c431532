@testable import WarblerRaft

/// Drives a set of in-memory Raft nodes from a small text language, printing what happens, so that scenarios
/// live in `testdata/*.txt` with their golden output (the shape of etcd-io/raft's `rafttest`).
final class InteractionEnv {
    struct Node {
        var raw: RawNode?
        let storage: MemoryStorage
        var config: Config
        /// The application state: the data of every applied normal entry, in order.
        var applied: [String] = []
    }

    private(set) var nodes: [NodeID: Node] = [:]
    /// Messages sent and not yet delivered or dropped, in send order.
    private var inFlight: [Message] = []
    /// When set, messages between nodes of different groups are dropped on delivery.
    private var partition: [Set<NodeID>]?
    private var out: [String] = []

    // MARK: - Running commands

    /// Runs one command and returns its output (no trailing newline; empty lines are never produced).
    func run(_ line: String) throws -> String {
        out = []
        let command = try Command(parsing: line)
        switch command.name {
        case "add-nodes": try addNodes(command)
        case "campaign": try withNode(command.int(0)) { $0.campaign() }
        case "propose": try propose(command)
        case "propose-conf-change": try proposeConfChange(command)
        case "tick": try tick(command.int(0), times: command.int(1))
        case "tick-heartbeat": try tickHeartbeat(command)
        case "tick-election": try tickElection(command)
        case "process-ready": for id in try command.ids() { processReady(NodeID(id)) }
        case "deliver-msgs": try deliverMessages(command)
        case "stabilize": try stabilize(command)
        case "partition": try setPartition(command)
        case "heal":
            partition = nil
            out.append("healed")
        case "crash": try crash(command.int(0))
        case "restart": try restart(command.int(0))
        case "status": try status(command)
        case "raft-log": try raftLog(command.int(0))
        case "applied": try printApplied(command)
        case "transfer-leadership": try transferLeadership(command)
        case "read-index": try readIndex(command)
        case "compact": try compact(command)
        case "report-unreachable":
            let peer = NodeID(try command.int(1))
            try withNode(command.int(0)) { $0.reportUnreachable(peer) }
        case "report-snapshot":
            let peer = NodeID(try command.int(1))
            let succeeded = command.positional.count < 3 || command.positional[2] != "fail"
            try withNode(command.int(0)) { $0.reportSnapshot(peer, succeeded: succeeded) }
        default: throw ScenarioError("unknown command \(command.name)")
        }
        checkInvariants()
        return out.joined(separator: "\n")
    }

    private func withNode(_ id: Int, _ body: (inout RawNode) throws -> Void) throws {
        guard var raw = nodes[NodeID(id)]?.raw else { throw ScenarioError("node \(id) is not running") }
        do {
            try body(&raw)
        } catch let error as RaftError {
            out.append("error: \(error)")
        }
        nodes[NodeID(id)]!.raw = raw
    }

    // MARK: - Commands

    private func addNodes(_ command: Command) throws {
        let count = try command.int(0)
        let voters = Set(try command.list("voters").map(NodeID.init))
        let learners = Set(try command.list("learners").map(NodeID.init))
        let index = UInt64(try command.option("index").map { try command.parseInt($0) } ?? 1)
        let first = NodeID((nodes.keys.max() ?? 0) + 1)
        for id in first..<(first + NodeID(count)) {
            var config = Config(id: id)
            config.electionTick = 10
            config.heartbeatTick = 1
            config.randomSeed = id
            config.preVote = command.bool("prevote", default: false)
            config.checkQuorum = command.bool("checkquorum", default: false)
            if let value = command.option("max-inflight") { config.maxInflightMsgs = try command.parseInt(value) }
            if let value = command.option("max-inflight-bytes") {
                config.maxInflightBytes = try command.parseInt(value)
            }
            if let value = command.option("max-size") { config.maxSizePerMsg = try command.parseInt(value) }
            if let value = command.option("max-uncommitted") {
                config.maxUncommittedEntriesSize = try command.parseInt(value)
            }
            if command.option("read-only") == "lease" { config.readOnlyOption = .leaseBased }
            let storage: MemoryStorage
            if voters.isEmpty {
                storage = MemoryStorage()
            } else {
                storage = MemoryStorage(bootstrap: ConfState(voters: voters, learners: learners), index: index)
            }
            let raw = try RawNode(config: config, storage: storage)
            nodes[id] = Node(raw: raw, storage: storage, config: config)
            out.append("\(id): new node, \(raw.confState) last=\(raw.lastIndex)")
        }
    }

    private func propose(_ command: Command) throws {
        let id = try command.int(0)
        let payloads = command.positional.dropFirst()
        try withNode(id) { raw in
            if payloads.count == 1 {
                try raw.propose(Array(payloads.first!.utf8))
            } else {
                try raw.proposeBatch(payloads.map { Array($0.utf8) })
            }
        }
    }

    private func proposeConfChange(_ command: Command) throws {
        let id = try command.int(0)
        guard command.positional.count == 2 else { throw ScenarioError("usage: propose-conf-change ID v4|l4|r4") }
        let spec = command.positional[1]
        let kind: ConfChange.Kind
        switch spec.first {
        case "v": kind = .addNode
        case "l": kind = .addLearner
        case "r": kind = .removeNode
        default: throw ScenarioError("conf change \(spec) must start with v, l or r")
        }
        let target = NodeID(try command.parseInt(String(spec.dropFirst())))
        try withNode(id) { try $0.proposeConfChange(ConfChange(kind, nodeID: target)) }
    }

    private func tick(_ id: Int, times: Int) throws {
        try withNode(id) { raw in for _ in 0..<times { raw.tick() } }
    }

    private func tickHeartbeat(_ command: Command) throws {
        for id in try command.ids() {
            try tick(id, times: nodes[NodeID(id)]!.config.heartbeatTick)
        }
    }

    /// Ticks until the node's election timeout fires once (followers campaign, leaders check quorum).
    private func tickElection(_ command: Command) throws {
        for id in try command.ids() {
            try withNode(id) { raw in
                let ticks =
                    raw.raft.role == .leader
                    ? raw.raft.electionTimeout - raw.raft.electionElapsed
                    : raw.raft.randomizedElectionTimeout - raw.raft.electionElapsed
                for _ in 0..<max(ticks, 1) { raw.tick() }
            }
        }
    }

    private func processReady(_ id: NodeID) {
        guard var raw = nodes[id]?.raw else {
            out.append("> \(id) is down")
            return
        }
        guard raw.hasReady else { return }
        let ready = raw.ready()
        out.append("> \(id) handling Ready")
        if let soft = ready.softState { out.append("  Lead:\(soft.lead) State:\(soft.role.rawValue)") }
        if let hard = ready.hardState { out.append("  HardState \(hard)") }
        if !ready.entries.isEmpty {
            out.append("  Entries:")
            for entry in ready.entries { out.append("  \(entry)") }
        }
        if let snapshot = ready.snapshot {
            let meta = snapshot.metadata
            out.append("  Snapshot Index:\(meta.index) Term:\(meta.term) \(meta.confState)")
        }
        if !ready.committedEntries.isEmpty {
            out.append("  CommittedEntries:")
            for entry in ready.committedEntries { out.append("  \(entry)") }
        }
        for state in ready.readStates {
            out.append("  ReadState Index:\(state.index) Context:\(quoted(state.requestContext))")
        }
        if !ready.messages.isEmpty {
            out.append("  Messages:")
            for message in ready.messages { out.append("  \(message)") }
        }
        // Persist (the storage is durable), then send, then apply.
        let storage = nodes[id]!.storage
        if let snapshot = ready.snapshot {
            try! storage.applySnapshot(snapshot)
            nodes[id]!.applied = decodeValues(snapshot.data)
        }
        storage.append(ready.entries)
        if let hard = ready.hardState { storage.setHardState(hard) }
        inFlight.append(contentsOf: ready.messages)
        for entry in ready.committedEntries where entry.kind == .normal && !entry.data.isEmpty {
            nodes[id]!.applied.append(String(decoding: entry.data, as: UTF8.self))
        }
        raw.advance(ready)
        nodes[id]!.raw = raw
    }

    private func deliverMessages(_ command: Command) throws {
        let drop = command.bool("drop", default: false)
        for id in try command.ids() { deliver(to: NodeID(id), drop: drop) }
    }

    /// Delivers (or drops) every in-flight message addressed to `id`. Returns true if there were any.
    @discardableResult
    private func deliver(to id: NodeID, drop: Bool) -> Bool {
        let batch = inFlight.filter { $0.to == id }
        guard !batch.isEmpty else { return false }
        inFlight.removeAll { $0.to == id }
        out.append(drop ? "> \(id) dropping messages" : "> \(id) receiving messages")
        for message in batch {
            if drop {
                out.append("  \(message)")
                continue
            }
            if let groups = partition,
                !groups.contains(where: { $0.contains(message.from) && $0.contains(message.to) })
            {
                out.append("  \(message) (dropped: partition)")
                continue
            }
            guard var raw = nodes[id]?.raw else {
                out.append("  \(message) (dropped: node down)")
                continue
            }
            out.append("  \(message)")
            do {
                try raw.step(message)
            } catch {
                out.append("  error: \(error)")
            }
            nodes[id]!.raw = raw
        }
        return true
    }

    private func stabilize(_ command: Command) throws {
        var ids = try command.ids().map(NodeID.init)
        if ids.isEmpty { ids = nodes.keys.sorted() }
        var rounds = 0
        while true {
            rounds += 1
            if rounds > 1000 { throw ScenarioError("stabilize did not converge") }
            var progressed = false
            for id in ids where nodes[id]?.raw?.hasReady == true {
                processReady(id)
                progressed = true
            }
            for id in ids where deliver(to: id, drop: false) { progressed = true }
            if !progressed { break }
        }
    }

    private func setPartition(_ command: Command) throws {
        // partition (1) (2 3): every parenthesised group is one side.
        var groups: [Set<NodeID>] = []
        for group in command.groups { groups.append(Set(try group.map { NodeID(try command.parseInt($0)) })) }
        guard groups.count >= 2 else { throw ScenarioError("partition needs at least two groups") }
        partition = groups
        let text = groups.map { "(" + $0.sorted().map(String.init).joined(separator: " ") + ")" }
        out.append("partitioned: " + text.joined(separator: " "))
    }

    private func crash(_ id: Int) throws {
        guard nodes[NodeID(id)]?.raw != nil else { throw ScenarioError("node \(id) is not running") }
        // Everything not persisted (the pending Ready, volatile state, messages to it) is lost.
        nodes[NodeID(id)]!.raw = nil
        inFlight.removeAll { $0.to == NodeID(id) }
        out.append("\(id) crashed")
    }

    private func restart(_ id: Int) throws {
        guard var node = nodes[NodeID(id)], node.raw == nil else { throw ScenarioError("node \(id) is running") }
        let snapshot = try node.storage.snapshot()
        node.config.applied = snapshot.metadata.index
        node.applied = decodeValues(snapshot.data)
        let raw = try RawNode(config: node.config, storage: node.storage)
        node.raw = raw
        // Connections to the node broke when it went down: what was sent to it meanwhile is gone.
        inFlight.removeAll { $0.to == NodeID(id) }
        nodes[NodeID(id)] = node
        out.append("\(id) restarted: \(raw.hardState) applied=\(raw.appliedIndex) last=\(raw.lastIndex)")
    }

    private func status(_ command: Command) throws {
        var ids = try command.ids().map(NodeID.init)
        if ids.isEmpty { ids = nodes.keys.sorted() }
        for id in ids {
            guard let raw = nodes[id]?.raw else {
                out.append("\(id): down")
                continue
            }
            let soft = raw.softState
            let hard = raw.hardState
            out.append(
                "\(id): \(soft.role.rawValue) term=\(hard.term) lead=\(soft.lead) commit=\(hard.commit) "
                    + "applied=\(raw.appliedIndex) last=\(raw.lastIndex) \(raw.confState)"
            )
            for (peer, progress) in raw.progress.sorted(by: { $0.key < $1.key }) where peer != id {
                var line = "  \(peer): \(progress.state.rawValue) match=\(progress.match) next=\(progress.next)"
                if progress.inflightCount > 0 { line += " inflight=\(progress.inflightCount)" }
                if progress.isLearner { line += " learner" }
                if progress.state == .snapshot { line += " pendingSnap=\(progress.pendingSnapshot)" }
                out.append(line)
            }
        }
    }

    private func raftLog(_ id: Int) throws {
        let storage = nodes[NodeID(id)]!.storage
        let first = try storage.firstIndex()
        let last = try storage.lastIndex()
        if last < first {
            out.append("log is empty: first index=\(first), last index=\(last)")
            return
        }
        for entry in try storage.entries(from: first, to: last + 1, maxSize: Int.max) { out.append("\(entry)") }
    }

    private func printApplied(_ command: Command) throws {
        var ids = try command.ids().map(NodeID.init)
        if ids.isEmpty { ids = nodes.keys.sorted() }
        for id in ids { out.append("\(id): [\(nodes[id]!.applied.joined(separator: " "))]") }
    }

    private func transferLeadership(_ command: Command) throws {
        guard let from = command.option("from"), let to = command.option("to") else {
            throw ScenarioError("usage: transfer-leadership from=ID to=ID")
        }
        let target = NodeID(try command.parseInt(to))
        try withNode(try command.parseInt(from)) { try $0.transferLeadership(to: target) }
    }

    private func readIndex(_ command: Command) throws {
        let context = Array(command.positional[1].utf8)
        try withNode(try command.int(0)) { try $0.readIndex(context: context) }
    }

    private func compact(_ command: Command) throws {
        let id = NodeID(try command.int(0))
        let index = UInt64(try command.int(1))
        let node = nodes[id]!
        guard let raw = node.raw else { throw ScenarioError("node \(id) is not running") }
        // The snapshot must reflect the application state at `index`, so only applied indexes qualify.
        guard index <= raw.appliedIndex else {
            throw ScenarioError("cannot snapshot \(index): applied is \(raw.appliedIndex)")
        }
        let values = try appliedValues(node, upTo: index)
        try node.storage.createSnapshot(at: index, confState: raw.confState, data: encodeValues(values))
        try node.storage.compact(upTo: index)
        out.append("\(id): snapshot and compaction at \(index)")
    }

    /// The application state after applying up to `index`, rebuilt from the snapshot plus the log.
    private func appliedValues(_ node: Node, upTo index: UInt64) throws -> [String] {
        let snapshot = try node.storage.snapshot()
        var values = decodeValues(snapshot.data)
        if index > snapshot.metadata.index {
            let entries = try node.storage.entries(
                from: snapshot.metadata.index + 1,
                to: index + 1,
                maxSize: Int.max
            )
            for entry in entries where entry.kind == .normal && !entry.data.isEmpty {
                values.append(String(decoding: entry.data, as: UTF8.self))
            }
        }
        return values
    }

    // MARK: - Invariants

    /// After every command: applied histories are prefixes of one another, and at most one leader per term.
    private func checkInvariants() {
        let histories = nodes.keys.sorted().map { nodes[$0]!.applied }
        for a in histories {
            for b in histories {
                let shorter = min(a.count, b.count)
                if a[..<shorter] != b[..<shorter] { out.append("INVARIANT VIOLATED: applied histories diverge") }
            }
        }
        var leaders: [UInt64: NodeID] = [:]
        for (id, node) in nodes.sorted(by: { $0.key < $1.key }) {
            guard let raw = node.raw, raw.softState.role == .leader else { continue }
            if let other = leaders[raw.hardState.term] {
                out.append("INVARIANT VIOLATED: \(other) and \(id) both lead term \(raw.hardState.term)")
            }
            leaders[raw.hardState.term] = id
        }
    }
}

private func encodeValues(_ values: [String]) -> [UInt8] { Array(values.joined(separator: ",").utf8) }
private func decodeValues(_ data: [UInt8]) -> [String] {
    data.isEmpty ? [] : String(decoding: data, as: UTF8.self).split(separator: ",").map(String.init)
}

struct ScenarioError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
