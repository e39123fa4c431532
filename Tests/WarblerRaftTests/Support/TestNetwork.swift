@testable import WarblerRaft

/// A tiny in-memory cluster for unit tests: delivers messages breadth-first, persisting each Ready at once.
struct TestNetwork {
    var nodes: [NodeID: RawNode] = [:]
    var storages: [NodeID: MemoryStorage] = [:]
    /// Directed links that drop everything.
    var cut: Set<[NodeID]> = []
    /// Message types that are dropped everywhere.
    var ignored: Set<MessageType> = []
    /// Every message that was delivered, in order.
    var delivered: [Message] = []

    init(voters: [NodeID], storages given: [NodeID: MemoryStorage] = [:], configure: (inout Config) -> Void = { _ in })
    {
        for id in voters {
            let storage = given[id] ?? MemoryStorage(bootstrap: ConfState(voters: Set(voters)), index: 1, term: 1)
            var config = Config(id: id)
            config.randomSeed = id
            config.preVote = false
            config.checkQuorum = false
            configure(&config)
            storages[id] = storage
            nodes[id] = try! RawNode(config: config, storage: storage)
        }
    }

    func raft(_ id: NodeID) -> Raft { nodes[id]!.raft }

    mutating func isolate(_ id: NodeID) {
        for other in nodes.keys where other != id {
            cut.insert([id, other])
            cut.insert([other, id])
        }
    }

    mutating func heal() { cut = [] }

    /// Persists and collects the outgoing messages of one node.
    mutating func drain(_ id: NodeID) -> [Message] {
        guard var raw = nodes[id] else { return [] }
        var out: [Message] = []
        while raw.hasReady {
            let ready = raw.ready()
            let storage = storages[id]!
            if let snapshot = ready.snapshot { try! storage.applySnapshot(snapshot) }
            storage.append(ready.entries)
            if let hard = ready.hardState { storage.setHardState(hard) }
            out.append(contentsOf: ready.messages)
            raw.advance(ready)
        }
        nodes[id] = raw
        return out
    }

    /// Delivers messages (and everything they cause) until the network is quiet.
    mutating func send(_ initial: [Message]) {
        var queue = initial
        for id in nodes.keys.sorted() { queue.append(contentsOf: drain(id)) }
        while !queue.isEmpty {
            let message = queue.removeFirst()
            if cut.contains([message.from, message.to]) || ignored.contains(message.type) { continue }
            guard var raw = nodes[message.to] else { continue }
            delivered.append(message)
            try? raw.step(message)
            nodes[message.to] = raw
            queue.append(contentsOf: drain(message.to))
        }
    }

    /// Makes `id` campaign and runs the election to completion.
    mutating func campaign(_ id: NodeID) {
        nodes[id]!.campaign()
        send([])
    }

    mutating func propose(_ id: NodeID, _ text: String) {
        try? nodes[id]!.propose(Array(text.utf8))
        send([])
    }

    /// The persisted log of a node (entries after its snapshot).
    func log(_ id: NodeID) -> [Entry] {
        let storage = storages[id]!
        let first = try! storage.firstIndex()
        let last = try! storage.lastIndex()
        if last < first { return [] }
        return try! storage.entries(from: first, to: last + 1, maxSize: Int.max)
    }
}

/// A single raft for direct unit tests.
func makeRaft(
    id: NodeID,
    voters: [NodeID],
    storage: MemoryStorage? = nil,
    configure: (inout Config) -> Void = { _ in }
) -> Raft {
    let storage = storage ?? MemoryStorage(bootstrap: ConfState(voters: Set(voters)), index: 1, term: 1)
    var config = Config(id: id)
    config.preVote = false
    config.checkQuorum = false
    configure(&config)
    return try! Raft(config: config, storage: storage)
}

/// Takes the raft's outgoing messages.
func takeMessages(_ raft: inout Raft) -> [Message] {
    let messages = raft.msgs
    raft.msgs = []
    return messages
}

/// A storage holding entries with the given terms at indexes 1, 2, ... (bootstrap snapshot at 0).
func storageWith(terms: [UInt64], voters: [NodeID]) -> MemoryStorage {
    let storage = MemoryStorage(bootstrap: ConfState(voters: Set(voters)), index: 0, term: 0)
    storage.append(terms.enumerated().map { Entry(term: $0.element, index: UInt64($0.offset + 1)) })
    return storage
}
