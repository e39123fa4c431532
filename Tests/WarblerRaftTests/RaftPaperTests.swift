import Testing

@testable import WarblerRaft

/// The rules of §5 of the Raft paper, one test each, and its five safety properties.
struct RaftPaperTests {
    // MARK: - §5.1: terms

    @Test(arguments: [StateRole.follower, .candidate, .leader])
    func anyRoleAdoptsAHigherTermAndBecomesFollower(_ role: StateRole) {
        var raft = makeRaft(id: 1, voters: [1, 2, 3])
        switch role {
        case .follower: raft.becomeFollower(term: 1, lead: 2)
        case .candidate, .preCandidate: raft.becomeCandidate()
        case .leader:
            raft.becomeCandidate()
            raft.becomeLeader()
        }
        raft.step(Message(type: .app, to: 1, from: 2, term: 5))
        #expect(raft.term == 5)
        #expect(raft.role == .follower)
        #expect(raft.lead == 2)
    }

    @Test func messagesFromAnOlderTermAreIgnored() {
        var raft = makeRaft(id: 1, voters: [1, 2, 3])
        raft.becomeFollower(term: 3, lead: 2)
        _ = takeMessages(&raft)
        raft.step(
            Message(type: .app, to: 1, from: 2, term: 2, logTerm: 1, index: 1, entries: [Entry(term: 2, index: 2)])
        )
        #expect(raft.log.lastIndex == 1)
        #expect(raft.term == 3)
    }

    // MARK: - §5.2: leader election

    @Test func nodesStartAsFollowers() {
        let raft = makeRaft(id: 1, voters: [1, 2, 3])
        #expect(raft.role == .follower)
        // The bootstrap state (term 1) is committed; no election has happened yet.
        #expect(raft.term == 1)
        #expect(raft.vote == noneNode)
    }

    @Test func leaderSendsHeartbeatsEveryHeartbeatTick() {
        var raft = makeRaft(id: 1, voters: [1, 2, 3])
        raft.becomeCandidate()
        raft.becomeLeader()
        _ = takeMessages(&raft)
        raft.tick()
        let heartbeats = takeMessages(&raft).filter { $0.type == .heartbeat }
        #expect(heartbeats.map(\.to).sorted() == [2, 3])
        #expect(heartbeats.allSatisfy { $0.term == 2 })
    }

    @Test(arguments: [StateRole.follower, .candidate])
    func electionTimeoutStartsAnElection(_ role: StateRole) {
        var raft = makeRaft(id: 1, voters: [1, 2, 3])
        if role == .candidate { raft.becomeCandidate() }
        let term = raft.term
        for _ in 0..<(2 * raft.electionTimeout) { raft.tick() }
        #expect(raft.role == .candidate)
        #expect(raft.term == term + 1)
        #expect(raft.vote == 1)
        let requests = takeMessages(&raft).filter { $0.type == .vote && $0.term == term + 1 }
        #expect(requests.map(\.to).sorted() == [2, 3])
    }

    @Test(arguments: [
        // (voters, granted, rejected, expected role)
        (3, [2], [] as [NodeID], StateRole.leader),
        (3, [], [2, 3], StateRole.follower),
        (3, [], [2], StateRole.candidate),
        (5, [2, 3], [], StateRole.leader),
        (5, [2], [3, 4], StateRole.candidate),
        (5, [2], [3, 4, 5], StateRole.follower),
    ])
    func candidateWinsOnlyWithAMajority(voterCount: Int, granted: [NodeID], rejected: [NodeID], expected: StateRole) {
        var raft = makeRaft(id: 1, voters: (1...NodeID(voterCount)).map { $0 })
        raft.step(Message(type: .hup, from: 1))
        for voter in granted { raft.step(Message(type: .voteResp, to: 1, from: voter, term: raft.term)) }
        for voter in rejected { raft.step(Message(type: .voteResp, to: 1, from: voter, term: raft.term, reject: true)) }
        #expect(raft.role == expected)
    }

    @Test func aFollowerVotesForAtMostOneCandidatePerTerm() {
        var raft = makeRaft(id: 1, voters: [1, 2, 3])
        raft.step(Message(type: .vote, to: 1, from: 2, term: 1, logTerm: 1, index: 1))
        raft.step(Message(type: .vote, to: 1, from: 3, term: 1, logTerm: 1, index: 1))
        // A repeated request from the same candidate is granted again (its response may have been lost).
        raft.step(Message(type: .vote, to: 1, from: 2, term: 1, logTerm: 1, index: 1))
        let responses = takeMessages(&raft)
        #expect(responses.map(\.reject) == [false, true, false])
        #expect(raft.vote == 2)
    }

    @Test func candidateStepsDownForALeaderOfItsTerm() {
        var raft = makeRaft(id: 1, voters: [1, 2, 3])
        raft.becomeCandidate()
        raft.step(Message(type: .app, to: 1, from: 2, term: raft.term, logTerm: 1, index: 1))
        #expect(raft.role == .follower)
        #expect(raft.lead == 2)
    }

    @Test func electionTimeoutsAreRandomizedAndDifferPerNode() {
        var seen: Set<Int> = []
        for id in NodeID(1)...20 {
            var raft = makeRaft(id: id, voters: [1, 2, 3]) { $0.randomSeed = id }
            for _ in 0..<10 {
                raft.resetRandomizedElectionTimeout()
                #expect(raft.randomizedElectionTimeout >= raft.electionTimeout)
                #expect(raft.randomizedElectionTimeout < 2 * raft.electionTimeout)
                seen.insert(raft.randomizedElectionTimeout)
            }
        }
        #expect(seen.count > 5)
    }

    @Test func theSameSeedDrawsTheSameTimeouts() {
        var a = makeRaft(id: 1, voters: [1]) { $0.randomSeed = 42 }
        var b = makeRaft(id: 1, voters: [1]) { $0.randomSeed = 42 }
        for _ in 0..<20 {
            a.resetRandomizedElectionTimeout()
            b.resetRandomizedElectionTimeout()
            #expect(a.randomizedElectionTimeout == b.randomizedElectionTimeout)
        }
    }

    // MARK: - §5.3: log replication

    @Test func leaderAppendsAndReplicatesAProposal() {
        var network = TestNetwork(voters: [1, 2, 3])
        network.campaign(1)
        try? network.nodes[1]!.propose(Array("x".utf8))
        let messages = network.drain(1)
        let appends = messages.filter { $0.type == .app }
        #expect(appends.map(\.to).sorted() == [2, 3])
        #expect(appends.allSatisfy { $0.entries.map(\.data) == [Array("x".utf8)] })
        // After the no-op at index 2 of term 2.
        #expect(appends.allSatisfy { $0.index == 2 && $0.logTerm == 2 })
    }

    @Test func leaderCommitsOnceAMajorityHasTheEntryAndTellsFollowers() {
        var network = TestNetwork(voters: [1, 2, 3, 4, 5])
        network.campaign(1)
        network.cut = [[1, 4], [1, 5]]
        network.propose(1, "x")
        // Two followers plus the leader: a majority of five.
        #expect(network.raft(1).log.committed == 3)
        #expect(network.raft(2).log.committed == 3)
        #expect(network.raft(4).log.committed == 2)
    }

    @Test func leaderDoesNotCommitWithoutAMajority() {
        var network = TestNetwork(voters: [1, 2, 3, 4, 5])
        network.campaign(1)
        network.cut = [[1, 3], [1, 4], [1, 5]]
        network.propose(1, "x")
        #expect(network.raft(1).log.committed == 2)
        #expect(network.raft(1).log.lastIndex == 3)
    }

    @Test func committingAnEntryCommitsAllPrecedingEntries() {
        // The leader has entries from an earlier term; committing its no-op commits them too.
        let storages = Dictionary(
            uniqueKeysWithValues: [NodeID(1), 2, 3].map { ($0, storageWith(terms: [1, 1, 2], voters: [1, 2, 3])) }
        )
        var network = TestNetwork(voters: [1, 2, 3], storages: storages)
        network.nodes[1]!.raft.becomeFollower(term: 2, lead: noneNode)
        network.campaign(1)
        #expect(network.raft(1).log.committed == 4)
        #expect(network.raft(2).log.committed == 4)
    }

    @Test func followerRejectsAnAppendWhoseLogDoesNotMatch() {
        var raft = makeRaft(id: 1, voters: [1, 2, 3], storage: storageWith(terms: [1, 2], voters: [1, 2, 3]))
        raft.becomeFollower(term: 2, lead: 2)
        // The previous entry (index 2) has term 2 here, not 1.
        raft.step(
            Message(type: .app, to: 1, from: 2, term: 2, logTerm: 1, index: 2, entries: [Entry(term: 2, index: 3)])
        )
        let response = takeMessages(&raft).last!
        #expect(response.type == .appResp && response.reject)
        #expect(raft.log.lastIndex == 2)
    }

    @Test func followerDeletesAConflictingTailAndAppends() {
        var raft = makeRaft(id: 1, voters: [1, 2, 3], storage: storageWith(terms: [1, 2, 2], voters: [1, 2, 3]))
        raft.becomeFollower(term: 3, lead: 2)
        raft.step(
            Message(type: .app, to: 1, from: 2, term: 3, logTerm: 1, index: 1, entries: [Entry(term: 3, index: 2)])
        )
        #expect(raft.log.lastIndex == 2)
        #expect(raft.log.termOrZero(2) == 3)
        #expect(takeMessages(&raft).last!.reject == false)
    }

    @Test func followerCommitsUpToTheLeadersCommitIndex() {
        var raft = makeRaft(id: 1, voters: [1, 2, 3])
        raft.becomeFollower(term: 1, lead: 2)
        raft.step(
            Message(
                type: .app,
                to: 1,
                from: 2,
                term: 1,
                logTerm: 1,
                index: 1,
                entries: [Entry(term: 1, index: 2), Entry(term: 1, index: 3)],
                commit: 2
            )
        )
        #expect(raft.log.committed == 2)
    }

    /// Figure 7 of the paper: whatever a follower's log holds, the leader brings it to its own.
    @Test(arguments: [
        [UInt64](arrayLiteral: 1, 1, 1, 4, 4, 5, 5, 6, 6),  // (a) missing entries
        [1, 1, 1, 4],  // (b)
        [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],  // (c) extra entry of the leader's previous term
        [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],  // (d) extra entries of a later term
        [1, 1, 1, 4, 4, 4, 4],  // (e)
        [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],  // (f)
    ])
    func leaderRepairsAnyFollowerLog(_ followerTerms: [UInt64]) {
        let leaderTerms: [UInt64] = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
        var storages: [NodeID: MemoryStorage] = [1: storageWith(terms: leaderTerms, voters: [1, 2, 3])]
        storages[2] = storageWith(terms: followerTerms, voters: [1, 2, 3])
        storages[3] = storageWith(terms: leaderTerms, voters: [1, 2, 3])
        var network = TestNetwork(voters: [1, 2, 3], storages: storages)
        for id in NodeID(1)...3 { network.nodes[id]!.raft.becomeFollower(term: 7, lead: noneNode) }
        network.campaign(1)
        #expect(network.raft(1).role == .leader)
        network.propose(1, "x")
        let leaderLog = network.log(1)
        #expect(network.log(2) == leaderLog)
        #expect(network.raft(2).log.committed == network.raft(1).log.committed)
    }

    // MARK: - §5.4: safety

    @Test(arguments: [
        // (voter's log terms, candidate last term, candidate last index, granted)
        ([UInt64](arrayLiteral: 1, 1), UInt64(1), UInt64(1), false),  // shorter, same term
        ([1, 1], 1, 2, true),
        ([1, 1], 1, 3, true),
        ([1, 2], 1, 3, false),  // older last term, even if longer
        ([1, 2], 2, 2, true),
        ([1, 2], 3, 1, true),  // newer last term, even if shorter
    ])
    func votesGoOnlyToCandidatesWithUpToDateLogs(terms: [UInt64], lastTerm: UInt64, lastIndex: UInt64, granted: Bool) {
        var raft = makeRaft(id: 1, voters: [1, 2, 3], storage: storageWith(terms: terms, voters: [1, 2, 3]))
        raft.step(Message(type: .vote, to: 1, from: 2, term: 5, logTerm: lastTerm, index: lastIndex))
        #expect(takeMessages(&raft).last!.reject == !granted)
    }

    @Test func leaderCommitsOnlyEntriesOfItsTermByCounting() {
        // Leader of term 3 holds an entry of term 2 that both followers acknowledge: not committed by count.
        let storage = storageWith(terms: [1, 2], voters: [1, 2, 3])
        var raft = makeRaft(id: 1, voters: [1, 2, 3], storage: storage)
        raft.becomeFollower(term: 2, lead: noneNode)
        raft.becomeCandidate()
        raft.becomeLeader()  // appends a no-op at index 3, term 3
        _ = takeMessages(&raft)
        raft.step(Message(type: .appResp, to: 1, from: 2, term: 3, index: 2))
        #expect(raft.log.committed == 0)
        raft.step(Message(type: .appResp, to: 1, from: 2, term: 3, index: 3))
        #expect(raft.log.committed == 3)
    }

    // MARK: - The five safety properties (Figure 3)

    @Test func electionSafetyAtMostOneLeaderPerTerm() {
        // Two candidates in the same term split the votes; neither can win twice over the same voters.
        var network = TestNetwork(voters: [1, 2, 3, 4, 5])
        network.ignored = [.vote]
        network.nodes[1]!.campaign()
        network.nodes[2]!.campaign()
        _ = network.drain(1)
        _ = network.drain(2)
        network.ignored = []
        let requests = [
            Message(type: .vote, to: 3, from: 1, term: 2, logTerm: 1, index: 1),
            Message(type: .vote, to: 4, from: 1, term: 2, logTerm: 1, index: 1),
            Message(type: .vote, to: 4, from: 2, term: 2, logTerm: 1, index: 1),
            Message(type: .vote, to: 5, from: 2, term: 2, logTerm: 1, index: 1),
            Message(type: .vote, to: 3, from: 2, term: 2, logTerm: 1, index: 1),
        ]
        network.send(requests)
        let leaders = network.nodes.values.filter { $0.raft.role == .leader && $0.raft.term == 2 }
        #expect(leaders.count == 1)
    }

    @Test func leaderAppendOnlyALeaderNeverOverwritesItsLog() {
        var network = TestNetwork(voters: [1, 2, 3])
        network.campaign(1)
        network.propose(1, "a")
        let before = network.log(1)
        // A forged append of the same term cannot make the leader truncate.
        network.send([
            Message(type: .app, to: 1, from: 2, term: 1, logTerm: 1, index: 1, entries: [Entry(term: 1, index: 2)])
        ])
        #expect(Array(network.log(1).prefix(before.count)) == before)
        #expect(network.raft(1).role == .leader)
    }

    @Test func logMatchingSameIndexAndTermMeansIdenticalPrefixes() {
        var network = TestNetwork(voters: [1, 2, 3])
        network.campaign(1)
        for text in ["a", "b", "c"] { network.propose(1, text) }
        network.isolate(1)
        network.propose(1, "lost")
        network.heal()
        network.isolate(1)
        network.campaign(2)
        network.propose(2, "d")
        network.heal()
        network.propose(2, "e")
        // A heartbeat round lets the leader find where node 1's log diverges and repair it.
        network.nodes[2]!.tick()
        network.send([])
        let logs = [network.log(1), network.log(2), network.log(3)]
        for a in logs {
            for b in logs {
                for (x, y) in zip(a, b) where x.index == y.index && x.term == y.term {
                    #expect(Array(a.prefix { $0.index <= x.index }) == Array(b.prefix { $0.index <= y.index }))
                }
            }
        }
        #expect(logs[0] == logs[1])
    }

    @Test func leaderCompletenessAStaleNodeCannotWin() {
        var network = TestNetwork(voters: [1, 2, 3])
        network.campaign(1)
        network.isolate(3)
        network.propose(1, "committed")
        #expect(network.raft(1).log.committed == 3)
        network.heal()
        network.isolate(1)
        // Node 3 lacks the committed entry: node 2 refuses its vote, so it cannot win.
        network.campaign(3)
        #expect(network.raft(3).role != .leader)
        network.campaign(2)
        #expect(network.raft(2).role == .leader)
        #expect(network.log(2).contains { $0.data == Array("committed".utf8) })
    }
}
