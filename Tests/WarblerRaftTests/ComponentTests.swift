import Testing

@testable import WarblerRaft

struct ConfigTests {
    @Test func defaultsAreValid() throws {
        try Config(id: 1).validate()
    }

    @Test(arguments: ["id", "heartbeatTick", "electionTick", "maxInflightMsgs", "maxInflightBytes", "checkQuorum"])
    func invalidFieldsAreNamed(field: String) {
        var config = Config(id: 1)
        switch field {
        case "id": config.id = 0
        case "heartbeatTick": config.heartbeatTick = 0
        case "electionTick": config.electionTick = 1
        case "maxInflightMsgs": config.maxInflightMsgs = 0
        case "maxInflightBytes": config.maxInflightBytes = 10
        default:
            config.readOnlyOption = .leaseBased
            config.checkQuorum = false
        }
        expectRaftError(.invalidConfig, containing: field) { try config.validate() }
    }

    @Test func rawNodeRefusesAnInvalidConfig() {
        var config = Config(id: 1)
        config.electionTick = 1
        #expect(throws: RaftError.self) { try RawNode(config: config, storage: MemoryStorage()) }
    }
}

struct MemoryStorageTests {
    func filled() -> MemoryStorage {
        let storage = MemoryStorage(bootstrap: ConfState(voters: [1]), index: 3, term: 3)
        storage.append([Entry(term: 3, index: 4), Entry(term: 4, index: 5), Entry(term: 5, index: 6)])
        return storage
    }

    @Test func boundsAndTerms() throws {
        let storage = filled()
        #expect(try storage.firstIndex() == 4)
        #expect(try storage.lastIndex() == 6)
        #expect(try storage.term(at: 3) == 3)
        #expect(try storage.term(at: 5) == 4)
        #expect(throws: RaftError.self) { try storage.term(at: 2) }
        #expect(throws: RaftError.self) { try storage.term(at: 7) }
    }

    @Test func entriesHonourTheSizeLimitButReturnAtLeastOne() throws {
        let storage = MemoryStorage(bootstrap: ConfState(voters: [1]), index: 0, term: 0)
        storage.append((1...5).map { Entry(term: 1, index: UInt64($0), data: [1, 2, 3, 4]) })
        #expect(try storage.entries(from: 1, to: 6, maxSize: 0).count == 1)
        #expect(try storage.entries(from: 1, to: 6, maxSize: 8).count == 2)
        #expect(try storage.entries(from: 1, to: 6, maxSize: .max).count == 5)
    }

    @Test func compactedRangesAreTypedErrors() throws {
        let storage = filled()
        expectRaftError(.compacted) { _ = try storage.entries(from: 3, to: 5, maxSize: .max) }
    }

    @Test func appendReplacesAConflictingTail() throws {
        let storage = filled()
        storage.append([Entry(term: 6, index: 5)])
        #expect(try storage.lastIndex() == 5)
        #expect(try storage.term(at: 5) == 6)
    }

    @Test func snapshotThenCompactFreesEntries() throws {
        let storage = filled()
        try storage.createSnapshot(at: 5, confState: ConfState(voters: [1]), data: [9])
        try storage.compact(upTo: 5)
        #expect(try storage.firstIndex() == 6)
        #expect(try storage.snapshot().metadata.index == 5)
        #expect(try storage.snapshot().metadata.term == 4)
        expectRaftError(.snapshotOutOfDate) { try storage.createSnapshot(at: 4, confState: ConfState(), data: []) }
    }

    @Test func applyingAnOlderSnapshotIsRefused() throws {
        let storage = filled()
        expectRaftError(.snapshotOutOfDate) {
            try storage.applySnapshot(Snapshot(metadata: SnapshotMetadata(index: 2, term: 2)))
        }
        try storage.applySnapshot(Snapshot(metadata: SnapshotMetadata(index: 10, term: 7)))
        #expect(try storage.firstIndex() == 11)
        #expect(try storage.lastIndex() == 10)
    }
}

struct ConfChangeTests {
    @Test(arguments: [ConfChange.Kind.addNode, .removeNode, .addLearner])
    func roundTrips(_ kind: ConfChange.Kind) throws {
        let change = ConfChange(kind, nodeID: 0x0102_0304_0506_0708, context: Array("addr".utf8))
        #expect(try ConfChange(decoding: change.encoded()) == change)
    }

    @Test func corruptBytesAreATypedError() {
        expectRaftError(.corrupt) { _ = try ConfChange(decoding: [7, 0, 0]) }
        expectRaftError(.corrupt) { _ = try ConfChange(decoding: [9, 0, 0, 0, 0, 0, 0, 0, 1]) }
    }
}

struct InflightsTests {
    @Test func fillsAndFreesInOrder() {
        var inflights = Inflights(capacity: 3, maxBytes: 0)
        for index in UInt64(1)...3 { inflights.add(index: index, bytes: 10) }
        #expect(inflights.isFull)
        inflights.freeLE(2)
        #expect(inflights.count == 1)
        #expect(!inflights.isFull)
        // Wraps around the ring.
        inflights.add(index: 4, bytes: 1)
        inflights.add(index: 5, bytes: 1)
        #expect(inflights.isFull)
        inflights.freeLE(5)
        #expect(inflights.count == 0)
        #expect(inflights.bytes == 0)
    }

    @Test func byteLimitFillsTheWindow() {
        var inflights = Inflights(capacity: 100, maxBytes: 10)
        inflights.add(index: 1, bytes: 6)
        #expect(!inflights.isFull)
        inflights.add(index: 2, bytes: 6)
        #expect(inflights.isFull)
        inflights.freeLE(1)
        #expect(!inflights.isFull)
    }
}

struct ProgressTests {
    func progress() -> Progress { Progress(next: 5, isLearner: false, maxInflight: 2, maxInflightBytes: 0) }

    @Test func probeSendsOneMessageAtATime() {
        var p = progress()
        #expect(!p.isPaused)
        p.sentEntries(3, bytes: 3)
        #expect(p.isPaused)
        let advanced = p.maybeUpdate(4)
        #expect(advanced)
        #expect(!p.isPaused)
    }

    @Test func replicatePipelinesUpToTheWindow() {
        var p = progress()
        p.match = 4
        p.becomeReplicate()
        p.sentEntries(1, bytes: 1)
        p.sentEntries(1, bytes: 1)
        #expect(p.next == 7)
        #expect(p.isPaused)
        _ = p.maybeUpdate(5)
        p.inflights.freeLE(5)
        #expect(!p.isPaused)
    }

    @Test func staleRejectionsAreIgnored() {
        var p = progress()
        p.match = 4
        p.becomeReplicate()
        let staleAccepted = p.maybeDecrease(rejected: 3, matchHint: 0)
        #expect(!staleAccepted)
        let accepted = p.maybeDecrease(rejected: 6, matchHint: 5)
        #expect(accepted)
        #expect(p.next == 5)
    }

    @Test func probeBacksOffToTheHintButNotBelowMatch() {
        var p = progress()
        p.match = 2
        p.next = 10
        let backedOff = p.maybeDecrease(rejected: 9, matchHint: 5)
        #expect(backedOff)
        #expect(p.next == 6)
        p.next = 10
        let backedOffToMatch = p.maybeDecrease(rejected: 9, matchHint: 0)
        #expect(backedOffToMatch)
        #expect(p.next == 3)
    }

    @Test func snapshotStateResumesAfterThePendingSnapshot() {
        var p = progress()
        p.becomeSnapshot(index: 20)
        #expect(p.isPaused)
        p.becomeProbe()
        #expect(p.next == 21)
    }
}

struct RawNodeTests {
    func singleNode() throws -> (RawNode, MemoryStorage) {
        let storage = MemoryStorage(bootstrap: ConfState(voters: [1]))
        return (try RawNode(config: Config(id: 1), storage: storage), storage)
    }

    func handle(_ node: inout RawNode, _ storage: MemoryStorage) -> Ready {
        let ready = node.ready()
        storage.append(ready.entries)
        if let hard = ready.hardState { storage.setHardState(hard) }
        node.advance(ready)
        return ready
    }

    @Test func singleVoterCommitsInOneReady() throws {
        var (node, storage) = try singleNode()
        node.campaign()
        _ = handle(&node, storage)
        try node.propose(Array("x".utf8))
        #expect(node.hasReady)
        let ready = handle(&node, storage)
        #expect(ready.entries.map(\.data) == [Array("x".utf8)])
        #expect(ready.committedEntries.map(\.data) == [Array("x".utf8)])
        #expect(ready.mustSync)
        #expect(!node.hasReady)
    }

    /// A leader's appends may leave before its own write (Raft thesis §10.2.1), but only in a term whose vote is
    /// stored; votes, answers and a new leader's first messages wait for the write.
    @Test func onlyALeadersReplicationInAStoredTermGoesBeforeTheWrite() throws {
        var network = TestNetwork(voters: [1, 2, 3])
        network.nodes[1]!.campaign()
        let campaign = network.nodes[1]!.ready()
        #expect(!campaign.replicatesBeforeWrite)
        #expect(campaign.messages.contains { $0.type == .vote })
        #expect(campaign.messagesBeforeWrite.isEmpty)
        #expect(campaign.messagesAfterWrite.map(\.type) == campaign.messages.map(\.type))
        network.storages[1]!.setHardState(campaign.hardState!)
        network.nodes[1]!.advance(campaign)
        network.send(campaign.messages)
        #expect(network.raft(1).role == .leader)

        try network.nodes[1]!.propose(Array("x".utf8))
        let append = network.nodes[1]!.ready()
        #expect(append.replicatesBeforeWrite)
        #expect(append.mustSync)
        let early = append.messagesBeforeWrite
        #expect(Set(early.map(\.to)) == [2, 3])
        #expect(early.allSatisfy { $0.type == .app && $0.entries.map(\.data) == [Array("x".utf8)] })
        #expect(append.messagesAfterWrite.allSatisfy { $0.type != .app && $0.type != .heartbeat })

        // The follower's acknowledgement is an answer: it waits for the follower's own write.
        try network.nodes[2]!.step(early.first { $0.to == 2 }!)
        let follower = network.nodes[2]!.ready()
        #expect(follower.messages.map(\.type) == [.appResp])
        #expect(follower.messagesBeforeWrite.isEmpty)
        #expect(follower.messagesAfterWrite.map(\.type) == [.appResp])
    }

    /// A leader whose election's term and vote are not stored yet (its votes came in before the Ready that asked
    /// for them was taken) sends nothing before the write, appends included.
    @Test func aLeaderWhoseTermIsNotStoredYetSendsNothingEarly() throws {
        var network = TestNetwork(voters: [1, 2, 3])
        network.nodes[1]!.campaign()
        let term = network.raft(1).term
        for voter: NodeID in [2, 3] {
            try network.nodes[1]!.step(Message(type: .voteResp, to: 1, from: voter, term: term))
        }
        #expect(network.raft(1).role == .leader)
        let ready = network.nodes[1]!.ready()
        #expect(ready.messages.contains { $0.type == .app })
        #expect(ready.hardState?.term == term)
        #expect(!ready.replicatesBeforeWrite)
        #expect(ready.messagesBeforeWrite.isEmpty)
        #expect(ready.messagesAfterWrite.count == ready.messages.count)
    }

    @Test func hardStateIsReportedOnlyWhenItChanges() throws {
        var (node, storage) = try singleNode()
        node.campaign()
        let first = handle(&node, storage)
        #expect(first.hardState != nil)
        #expect(first.softState?.role == .leader)
        #expect(!node.hasReady)
    }

    @Test func networkMessagesOfLocalTypesAreRefused() throws {
        var (node, _) = try singleNode()
        do {
            try node.step(Message(type: .hup, to: 1, from: 2))
            Issue.record("a local message type was accepted from the network")
        } catch {
            #expect(error.code == .proposalDropped)
        }
    }

    @Test func onlyTheLeaderTransfersLeadershipAndOnlyToAVoter() throws {
        var (node, storage) = try singleNode()
        #expect(throws: RaftError.self) { try node.transferLeadership(to: 2) }
        node.campaign()
        let ready = node.ready()
        storage.append(ready.entries)
        node.advance(ready)
        do {
            try node.transferLeadership(to: 9)
            Issue.record("transfer to a non-voter was accepted")
        } catch {
            #expect(error.code == .invalidTransfer)
        }
    }

    @Test func committedEntriesAreLimitedPerReady() throws {
        let storage = MemoryStorage(bootstrap: ConfState(voters: [1]))
        var config = Config(id: 1)
        config.maxCommittedSizePerReady = 4
        var node = try RawNode(config: config, storage: storage)
        node.campaign()
        _ = handle(&node, storage)
        try node.proposeBatch([[1, 1, 1], [2, 2, 2], [3, 3, 3]])
        var applied: [[UInt8]] = []
        while node.hasReady {
            let ready = handle(&node, storage)
            #expect(ready.committedEntries.count <= 2)
            applied += ready.committedEntries.map(\.data)
        }
        #expect(applied == [[1, 1, 1], [2, 2, 2], [3, 3, 3]])
    }
}

/// Expects `body` to throw a ``RaftError`` with `code` (and, if given, a message mentioning `text`).
func expectRaftError(
    _ code: RaftError.Code,
    containing text: String? = nil,
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () throws -> Void
) {
    do {
        try body()
        Issue.record("expected \(code), nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as RaftError {
        #expect(error.code == code, sourceLocation: sourceLocation)
        if let text { #expect(error.message.contains(text), "\(error.message)", sourceLocation: sourceLocation) }
    } catch {
        Issue.record("expected \(code), got \(error)", sourceLocation: sourceLocation)
    }
}
