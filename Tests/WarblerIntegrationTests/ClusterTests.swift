import Foundation
import NIOCore
import Synchronization
import Testing
import WarblerChat
import WarblerClient
import WarblerWire

/// Real `warbler` processes on loopback forming one cluster (init, join over mutual TLS), driven by SDK
/// clients connected to different nodes; leaders killed by SIGKILL, frozen by SIGSTOP; nodes added and removed
/// under load; the whole cluster restarted.
@Suite(.serialized)
struct ClusterTests {
    static let password = "correct horse battery staple"

    /// Starts node 1 (which initialises the cluster and holds the accounts), then joins the others, and waits
    /// until every group has a leader and every node as a member.
    func cluster(
        size: Int = 3,
        users: [String],
        serveArguments: [String] = [],
        regions: [String] = []
    )
        async throws -> [NodeProcess]
    {
        let nodes = try (1...size).map { try NodeProcess(nodeID: UInt64($0)) }
        for (index, node) in nodes.enumerated() {
            node.serveArguments = serveArguments + (regions.isEmpty ? [] : ["--region", regions[index]])
        }
        for user in users { try await nodes[0].addUser(user, password: Self.password) }
        try await nodes[0].start()
        for node in nodes[1...] {
            try await node.issueCertificate(caDirectory: nodes[0].dataDirectory + "/ca")
            try await node.start(join: nodes[0].peerAddress)
        }
        try await waitForMembership(Set(nodes.map(\.nodeID)), asSeenBy: nodes[0])
        return nodes
    }

    /// Waits until every group (metadata + 64 partitions) has a leader and exactly `members` as replicas, with
    /// min(3, members) voters in partitions.
    func waitForMembership(_ members: Set<UInt64>, asSeenBy node: NodeProcess, seconds: Double = 90) async throws {
        let formed = try await eventually(seconds: seconds) {
            let status = try await node.clusterStatus()
            return status.groups.count == 65
                && status.groups.allSatisfy { group in
                    Set(group.voters + group.learners) == members && group.leader != 0
                        && (group.group == 0 || group.voters.count == min(3, members.count))
                }
        }
        guard formed else { throw TestFailure("membership \(members) not reached: \(try await node.clusterStatus())") }
    }

    func eventually(seconds: Double, _ condition: () async throws -> Bool) async throws -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if (try? await condition()) == true { return true }
            try await Task.sleep(nanoseconds: 250_000_000)
        }
        return false
    }

    /// The leader of `group` as the running nodes report it.
    func leader(of group: UInt32, among nodes: [NodeProcess], excluding excluded: UInt64 = 0) async -> UInt64 {
        for node in nodes where node.isRunning && node.nodeID != excluded {
            if let status = try? await node.clusterStatus(),
                let record = status.groups.first(where: { $0.group == group }),
                record.leader != 0
            {
                return record.leader
            }
        }
        return 0
    }

    static func partition(of conversation: String) -> UInt32 {
        ChatPartitioning.partition(of: conversation, count: 64)
    }

    /// Sends until acknowledged, resending the same client message id (never a second message).
    static func sendUntilAcknowledged(
        _ text: String,
        id: String,
        to conversation: String,
        with client: WarblerClient,
        into acknowledged: AcknowledgedBySeq
    ) async throws {
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            if let ack = try? await client.send(Data(text.utf8), to: conversation, clientMessageID: id) {
                acknowledged.record(ack.seq, text)
                return
            }
            try await Task.sleep(nanoseconds: 100_000_000)
        }
        throw TestFailure("\(id) was never acknowledged")
    }

    /// Every node holds every acknowledged message, at its acknowledged seq, gap-free, in one order.
    func verify(_ conversation: String, on nodes: [NodeProcess], acknowledged: AcknowledgedBySeq) async throws {
        let expected = acknowledged.all
        #expect(!acknowledged.conflicts, "one seq was acknowledged for two different messages")
        var orders: [[String]] = []
        for node in nodes {
            let (reader, _) = try await node.login("bob", password: Self.password)
            // History is read through ReadIndex: linearizable on every node, however far behind it was.
            var texts: [String] = []
            var before: UInt64 = 0
            while true {
                let page = try await reader.history(of: conversation, before: before, limit: 100)
                let seqs = page.messages.map(\.seq)
                #expect(seqs == Array((seqs.first ?? 1)..<((seqs.first ?? 1) + UInt64(seqs.count))))
                texts = page.messages.map { String(decoding: $0.payload, as: UTF8.self) } + texts
                guard let first = seqs.first, page.more else { break }
                before = first
            }
            #expect(texts.count >= expected.count, "node \(node.nodeID) holds \(texts.count) messages")
            #expect(Set(texts).count == texts.count, "node \(node.nodeID) holds a message twice")
            for (seq, text) in expected {
                #expect(
                    texts.indices.contains(Int(seq) - 1) && texts[Int(seq) - 1] == text,
                    "seq \(seq) on \(node.nodeID)"
                )
            }
            orders.append(texts)
            await reader.close()
        }
        #expect(orders.allSatisfy { $0 == orders[0] })
    }

    @Test func messagesReplicateDeliverAcrossNodesAndSurviveKilledLeadersAndAFullRestart() async throws {
        let nodes = try await cluster(users: ["ada", "bob", "cy", "dee"])
        // ada talks through node 1, bob listens on node 3.
        let (ada, _) = try await nodes[0].login("ada", password: Self.password)
        let (bob, bobEvents) = try await nodes[2].login("bob", password: Self.password)
        let group = try await ada.createGroup(title: "ops", members: ["bob", "cy", "dee"])
        let acknowledged = AcknowledgedBySeq()
        for index in 1...10 {
            let ack = try await ada.send(Data("live-\(index)".utf8), to: group.conversationID)
            acknowledged.record(ack.seq, "live-\(index)")
        }
        #expect(await bobEvents.waitForMessages(10))
        #expect(bobEvents.messages.map(\.seq) == Array(1...10))

        // Idle groups go quiet on every node (no per-group heartbeats), and a busy one wakes up.
        let quiet = try await eventually(seconds: 15) {
            for node in nodes where try await node.clusterStatus().groups.filter(\.quiet).count < 60 { return false }
            return true
        }
        #expect(quiet, "idle groups did not go quiet")
        // Delivered on node 3 means applied there: a bounded-stale read of node 3's replica sees it all.
        let stale = try await bob.history(of: group.conversationID, limit: 100, maxStaleness: .seconds(5))
        #expect(stale.messages.map(\.seq) == Array(1...10))

        // A burst of pipelined sends through a node that does not lead the conversation's partition: they are
        // forwarded to the leader in batches, and get their seqs in the order they were sent.
        let partition = Self.partition(of: group.conversationID)
        let leaderID = await leader(of: partition, among: nodes)
        try #require(leaderID != 0)
        let forwarding = nodes.first { $0.nodeID != leaderID }!
        let raw = try RawConnection(port: forwarding.port)
        raw.handshake()
        try #require(raw.login("cy", Self.password) != nil)
        var burst: [UInt8] = []
        for index in 0..<200 {
            var frame = Warbler_V1_ClientFrame()
            frame.requestID = 100 + UInt64(index)
            frame.send = .with {
                $0.conversationID = group.conversationID
                $0.clientMessageID = "burst-\(index)"
                $0.payload = Data("burst-\(index)".utf8)
            }
            burst += Array(FrameCodec.lengthPrefixed(frame, allocator: ByteBufferAllocator()).readableBytesView)
        }
        raw.write(burst)
        var seqs: [UInt64: UInt64] = [:]
        while seqs.count < 200, let frame = raw.readFrame() {
            guard frame.requestID >= 100 else { continue }
            guard case .ack(let ack) = frame.body else {
                Issue.record("burst send \(frame.requestID - 100) answered \(frame)")
                break
            }
            seqs[frame.requestID - 100] = ack.seq
            acknowledged.record(ack.seq, "burst-\(frame.requestID - 100)")
        }
        #expect(
            (0..<200).map { seqs[$0] } == (UInt64(11)...210).map { Optional($0) },
            "seqs out of send order: \(seqs)"
        )
        #expect(await bobEvents.waitForMessages(210))

        var dee: WarblerClient?
        var deeEvents: EventRecorder?
        for round in 1...3 {
            let victimID = await leader(of: partition, among: nodes)
            try #require(victimID != 0)
            let victim = nodes[Int(victimID) - 1]
            if round == 1 {
                // dee listens through the node this round kills, and knows the others: the SDK moves to another.
                let deeNodes = ([victim] + nodes.filter { $0.nodeID != victimID }).map {
                    WarblerClient.Configuration.Node(host: "127.0.0.1", port: $0.port)
                }
                dee = WarblerClient(configuration: .init(nodes: deeNodes))
                deeEvents = EventRecorder(dee!)
                try await dee!.connect()
                try await dee!.login(user: "dee", password: Self.password)
            }
            let senderNode = nodes.first { $0.nodeID != victimID }!
            let (sender, _) = try await senderNode.login("cy", password: Self.password)
            // Send continuously while the leader dies; every send is retried with its id until acknowledged.
            let sending = Task {
                for index in 1...40 {
                    try await Self.sendUntilAcknowledged(
                        "round \(round) message \(index)",
                        id: "r\(round)-\(index)",
                        to: group.conversationID,
                        with: sender,
                        into: acknowledged
                    )
                }
            }
            try await Task.sleep(nanoseconds: 300_000_000)
            let killedAt = Date()
            victim.kill9()
            let failedOver = try await eventually(seconds: 10) {
                let leader = await leader(of: partition, among: nodes)
                return leader != 0 && leader != victimID
            }
            #expect(failedOver, "round \(round): no new leader after killing node \(victimID)")
            print(
                "cluster: round \(round): node \(victimID) killed; new leader after \(Date().timeIntervalSince(killedAt)) s"
            )
            // The two survivors carry every send on their own; then the killed node comes back.
            do { try await sending.value } catch {
                // What the survivors think of the partition, for the failure report.
                for node in nodes where node.isRunning {
                    let record = try? await node.clusterStatus().groups.first { $0.group == partition }
                    print("cluster: node \(node.nodeID) sees partition \(partition): \(String(describing: record))")
                }
                throw error
            }
            if round == 1, let deeEvents {
                // dee's node is still down: a message sent now reaches dee through another node. (The direct
                // conversation's partition may still be electing a leader: retried until it has one.)
                var direct: Warbler_V1_Conversation?
                for _ in 0..<60 where direct == nil {
                    do {
                        let conversation = try await sender.createDirect(with: "dee")
                        _ = try await sender.send(
                            Data("while node \(victimID) is down".utf8),
                            to: conversation.conversationID,
                            clientMessageID: "while-down"
                        )
                        direct = conversation
                    } catch {
                        try await Task.sleep(nanoseconds: 250_000_000)
                    }
                }
                let directID = try #require(direct).conversationID
                #expect(
                    await deeEvents.wait(seconds: 20) { events in
                        events.contains {
                            if case .message(let message) = $0 {
                                return message.conversationID == directID
                            }
                            return false
                        }
                    },
                    "dee did not get a message while its node was down"
                )
            }
            await sender.close()
            try await victim.start()
        }
        #expect(acknowledged.all.count == 330)
        try await verify(group.conversationID, on: nodes, acknowledged: acknowledged)

        // bob, connected to node 3 all along (node 3 was killed at most as a leader; the SDK reconnects and
        // resumes), has every message in order.
        #expect(await bobEvents.waitForMessages(330, seconds: 30))
        #expect(bobEvents.messages.map(\.seq) == Array(1...330))
        // dee's node died in the first round: dee went on through another node, and can read everything.
        let deeClient = try #require(dee)
        #expect(
            try #require(deeEvents).events.contains {
                if case .reconnected = $0 { return true }
                return false
            }
        )
        let deeHistory = try await deeClient.history(of: group.conversationID, limit: 500)
        #expect(deeHistory.messages.map(\.seq) == Array(1...330))
        await deeClient.close()
        await ada.close()
        await bob.close()

        // The whole cluster stops and starts again: nothing is lost, and it keeps serving.
        for node in nodes { node.stop() }
        for node in nodes { try await node.start() }
        try await waitForMembership([1, 2, 3], asSeenBy: nodes[1])
        let (again, _) = try await nodes[1].login("ada", password: Self.password)
        for index in 1...10 {
            try await Self.sendUntilAcknowledged(
                "after restart \(index)",
                id: "restart-\(index)",
                to: group.conversationID,
                with: again,
                into: acknowledged
            )
        }
        await again.close()
        try await verify(group.conversationID, on: nodes, acknowledged: acknowledged)
        for node in nodes { node.stop() }
    }

    @Test func aFrozenLeaderIsReplacedAndItsStaleTermWritesNothing() async throws {
        let nodes = try await cluster(users: ["ada", "bob", "cy"])
        let (ada, _) = try await nodes[0].login("ada", password: Self.password)
        let group = try await ada.createGroup(title: "frozen", members: ["bob", "cy"])
        let acknowledged = AcknowledgedBySeq()
        let partition = Self.partition(of: group.conversationID)
        let victimID = await leader(of: partition, among: nodes)
        try #require(victimID != 0)
        let victim = nodes[Int(victimID) - 1]
        let survivor = nodes.first { $0.nodeID != victimID }!
        // A client of the node that is about to freeze.
        let (stale, _) = try await victim.login("cy", password: Self.password, reconnect: false)
        victim.pause()
        let staleSend = Task {
            try? await stale.send(
                Data("sent to the frozen leader".utf8),
                to: group.conversationID,
                clientMessageID: "stale"
            )
        }
        let frozenAt = Date()
        let failedOver = try await eventually(seconds: 10) {
            let leader = await leader(of: partition, among: nodes, excluding: victimID)
            return leader != 0 && leader != victimID
        }
        #expect(failedOver)
        print("cluster: leader \(victimID) frozen; new leader after \(Date().timeIntervalSince(frozenAt)) s")
        let (sender, _) = try await survivor.login("ada", password: Self.password)
        for index in 1...20 {
            try await Self.sendUntilAcknowledged(
                "while frozen \(index)",
                id: "frozen-\(index)",
                to: group.conversationID,
                with: sender,
                into: acknowledged
            )
        }
        victim.resume()
        // The old leader learns the new term and steps down; what it appended in its old term is discarded, so
        // the send it took while frozen is either refused or committed through the new leader — never both.
        if let ack = await staleSend.value { acknowledged.record(ack.seq, "sent to the frozen leader") }
        let steppedDown = try await eventually(seconds: 10) {
            let status = try await victim.clusterStatus()
            let record = status.groups.first { $0.group == partition }
            return record != nil && record!.leader != victimID && record!.leader != 0
        }
        #expect(steppedDown)
        for index in 21...30 {
            try await Self.sendUntilAcknowledged(
                "after resume \(index)",
                id: "frozen-\(index)",
                to: group.conversationID,
                with: sender,
                into: acknowledged
            )
        }
        await stale.close()
        await sender.close()
        await ada.close()
        try await verify(group.conversationID, on: nodes, acknowledged: acknowledged)
        for node in nodes { node.stop() }
    }

    @Test func aFourthNodeJoinsUnderLoadCatchesUpBySnapshotAndARemovedNodeHandsItsReplicasOver() async throws {
        // Small compaction threshold so that the new node is far behind every compacted log.
        let tuning = ["--compact-after", "40"]
        let nodes = try await cluster(users: ["ada", "bob", "cy"], serveArguments: tuning)
        let (ada, _) = try await nodes[0].login("ada", password: Self.password)
        let group = try await ada.createGroup(title: "growing", members: ["bob", "cy"])
        let acknowledged = AcknowledgedBySeq()
        for index in 1...150 {
            let ack = try await ada.send(Data("before \(index)".utf8), to: group.conversationID)
            acknowledged.record(ack.seq, "before \(index)")
        }
        let fourth = try NodeProcess(nodeID: 4)
        fourth.serveArguments = tuning
        try await fourth.issueCertificate(caDirectory: nodes[0].dataDirectory + "/ca")
        let sending = Task {
            for index in 1...100 {
                try await Self.sendUntilAcknowledged(
                    "during join \(index)",
                    id: "join-\(index)",
                    to: group.conversationID,
                    with: ada,
                    into: acknowledged
                )
            }
        }
        let joinedAt = Date()
        try await fourth.start(join: nodes[1].peerAddress)
        // A login on the node as soon as it listens: it waits for its replica of the metadata group to exist and
        // be current rather than refusing an account it has not replicated yet.
        _ = try await fourth.login("cy", password: Self.password)
        try await waitForMembership([1, 2, 3, 4], asSeenBy: nodes[1])
        print(
            "cluster: node 4 joined and holds a replica of all 65 groups after \(Date().timeIntervalSince(joinedAt)) s"
        )
        try await sending.value
        #expect(fourth.log.contains("installed a snapshot"))
        let partition = Self.partition(of: group.conversationID)
        let snapshotOfPartition = fourth.log.split(separator: "\n").contains {
            $0.contains("installed a snapshot") && $0.contains("raft.group=\(partition) ")
                && !$0.contains("raft.index=1 ")
        }
        #expect(snapshotOfPartition, "node 4 did not catch up on the busy partition from a snapshot")
        // A member on the new node receives what is sent through node 1, live.
        let (bob, bobEvents) = try await fourth.login("bob", password: Self.password)
        let ack = try await ada.send(Data("to the new node".utf8), to: group.conversationID)
        acknowledged.record(ack.seq, "to the new node")
        #expect(
            await bobEvents.wait {
                $0.contains { event in
                    if case .message(let message) = event { return message.seq == ack.seq }
                    return false
                }
            }
        )
        await bob.close()
        try await verify(group.conversationID, on: nodes + [fourth], acknowledged: acknowledged)

        // Node 1 leaves: its replicas move to the others first, then it leaves every group.
        try await NodeProcess.cli([
            "cluster", "remove", "1", "--peer", nodes[1].peerAddress, "--certs", nodes[1].dataDirectory + "/certs",
        ])
        try await waitForMembership([2, 3, 4], asSeenBy: nodes[1])
        let (cy, _) = try await nodes[2].login("cy", password: Self.password)
        for index in 1...20 {
            try await Self.sendUntilAcknowledged(
                "after removal \(index)",
                id: "removal-\(index)",
                to: group.conversationID,
                with: cy,
                into: acknowledged
            )
        }
        await cy.close()
        await ada.close()
        try await verify(group.conversationID, on: [nodes[1], nodes[2], fourth], acknowledged: acknowledged)
        #expect(nodes[0].log.contains("left a group; its replica here is deleted"))
        for node in nodes + [fourth] { node.stop() }
    }
}

extension ClusterTests {
    @Test func aPartitionsLeaderMovesToItsPreferredRegion() async throws {
        let regions = ["eu", "us", "ap"]
        let nodes = try await cluster(users: ["ada", "bob"], regions: regions)
        let (ada, _) = try await nodes[0].login("ada", password: Self.password)
        let direct = try await ada.createDirect(with: "bob")
        let partition = Self.partition(of: direct.conversationID)
        let current = await leader(of: partition, among: nodes)
        try #require(current != 0)
        let target = nodes.first { $0.nodeID != current }!
        let region = regions[Int(target.nodeID) - 1]
        try await NodeProcess.cli([
            "cluster", "prefer-region", "--group", "\(partition)", "--region", region, "--peer", nodes[0].peerAddress,
            "--certs", nodes[0].dataDirectory + "/certs",
        ])
        let moved = try await eventually(seconds: 20) { await leader(of: partition, among: nodes) == target.nodeID }
        #expect(moved, "the leader of partition \(partition) did not move to region \(region)")
        // It stays there (balancing does not move it out), and the partition keeps serving.
        try await Task.sleep(nanoseconds: 2_500_000_000)
        #expect(await leader(of: partition, among: nodes) == target.nodeID)
        let ack = try await ada.send(Data("hello from eu".utf8), to: direct.conversationID)
        #expect(ack.seq == 1)
        await ada.close()
        for node in nodes { node.stop() }
    }
}

/// Acknowledged messages by seq, recorded from sending tasks; notices a seq acknowledged for two messages.
final class AcknowledgedBySeq: Sendable {
    private let state = Mutex<(bySeq: [UInt64: String], conflicts: Bool)>(([:], false))

    func record(_ seq: UInt64, _ text: String) {
        state.withLock { state in
            if let known = state.bySeq[seq], known != text { state.conflicts = true }
            state.bySeq[seq] = text
        }
    }

    var all: [UInt64: String] { state.withLock { $0.bySeq } }
    var conflicts: Bool { state.withLock { $0.conflicts } }
}
