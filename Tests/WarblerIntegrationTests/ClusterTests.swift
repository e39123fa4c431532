import Foundation
import Synchronization
import Testing
import WarblerClient
import WarblerWire

/// Three real `warbler` processes on loopback forming one cluster (init, join over mutual TLS), driven by SDK
/// clients connected to different nodes, with leaders killed by SIGKILL under load.
@Suite(.serialized)
struct ClusterTests {
    static let password = "correct horse battery staple"

    /// Starts node 1 (which initialises the cluster and holds the accounts), then joins nodes 2 and 3, and waits
    /// until every group has three voters.
    func cluster(users: [String]) async throws -> [NodeProcess] {
        let nodes = try (1...3).map { try NodeProcess(nodeID: UInt64($0)) }
        for user in users { try nodes[0].addUser(user, password: Self.password) }
        try await nodes[0].start()
        for node in nodes[1...] {
            try node.issueCertificate(caDirectory: nodes[0].dataDirectory + "/ca")
            try await node.start(join: nodes[0].peerAddress)
        }
        let formed = try await eventually(seconds: 60) {
            let status = try nodes[0].clusterStatus()
            return status.nodes.count == 3 && status.groups.count == 65
                && status.groups.allSatisfy { $0.voters.count == 3 && $0.learners.isEmpty && $0.leader != 0 }
        }
        guard formed else { throw TestFailure("the cluster did not form: \(try nodes[0].clusterStatus())") }
        return nodes
    }

    func eventually(seconds: Double, _ condition: () throws -> Bool) async throws -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if (try? condition()) == true { return true }
            try await Task.sleep(nanoseconds: 250_000_000)
        }
        return false
    }

    /// The leader of `group` as the running nodes report it.
    func leader(of group: UInt32, among nodes: [NodeProcess]) -> UInt64 {
        for node in nodes where node.isRunning {
            if let status = try? node.clusterStatus(), let record = status.groups.first(where: { $0.group == group }),
                record.leader != 0
            {
                return record.leader
            }
        }
        return 0
    }

    @Test func messagesReplicateDeliverAcrossNodesAndSurviveKilledLeaders() async throws {
        let nodes = try await cluster(users: ["ada", "bob", "cy"])
        // ada talks through node 1, bob listens on node 3.
        let (ada, _) = try await nodes[0].login("ada", password: Self.password)
        let (bob, bobEvents) = try await nodes[2].login("bob", password: Self.password)
        let group = try await ada.createGroup(title: "ops", members: ["bob", "cy"])
        for index in 1...10 { _ = try await ada.send(Data("live-\(index)".utf8), to: group.conversationID) }
        #expect(await bobEvents.waitForMessages(10))
        #expect(bobEvents.messages.map(\.seq) == Array(1...10))

        // The conversation's partition: find it from which group's leader changes... every node reports it.
        let partition = UInt32(1 + fnv1a(group.conversationID) % 64)
        let acknowledged = AcknowledgedBySeq()
        for round in 1...3 {
            let victimID = leader(of: partition, among: nodes)
            #expect(victimID != 0)
            let victim = nodes[Int(victimID) - 1]
            let senderNode = nodes.first { $0.nodeID != victimID && $0.isRunning }!
            let (sender, _) = try await senderNode.login("cy", password: Self.password)
            // Send continuously while the leader dies; every send is retried with its id until acknowledged.
            let sending = Task {
                for index in 1...40 {
                    let id = "r\(round)-\(index)"
                    let text = "round \(round) message \(index)"
                    while true {
                        if let ack = try? await sender.send(
                            Data(text.utf8),
                            to: group.conversationID,
                            clientMessageID: id
                        ) {
                            acknowledged.record(ack.seq, text)
                            break
                        }
                        try await Task.sleep(nanoseconds: 100_000_000)
                    }
                }
            }
            try await Task.sleep(nanoseconds: 300_000_000)
            let killedAt = Date()
            victim.kill9()
            // A new leader takes over the partition while the old one is down.
            let failedOver = try await eventually(seconds: 10) {
                let leader = leader(of: partition, among: nodes)
                return leader != 0 && leader != victimID
            }
            #expect(failedOver, "round \(round): no new leader after killing node \(victimID)")
            print("round \(round): node \(victimID) killed; new leader after \(Date().timeIntervalSince(killedAt)) s")
            try await sending.value
            try await victim.start()
            await sender.close()
        }
        // Every node — including the ones killed and restarted — holds every acknowledged message, gap-free, in
        // the same order.
        let expected = acknowledged.all
        let lastSeq = expected.keys.max() ?? 0
        #expect(lastSeq >= 130)
        var orders: [[String]] = []
        for node in nodes {
            let (reader, _) = try await node.login("bob", password: Self.password)
            var texts: [String] = []
            var before: UInt64 = 0
            // Newest page first, then older ones (`before` 0 means from the newest).
            while true {
                let page = try await reader.history(of: group.conversationID, before: before, limit: 100)
                let seqs = page.messages.map(\.seq)
                #expect(seqs == Array((seqs.first ?? 1)..<((seqs.first ?? 1) + UInt64(seqs.count))))
                texts = page.messages.map { String(decoding: $0.payload, as: UTF8.self) } + texts
                guard let first = seqs.first, page.more else { break }
                before = first
            }
            #expect(texts.count == Int(lastSeq), "node \(node.nodeID) holds \(texts.count) of \(lastSeq) messages")
            for (seq, text) in expected { #expect(texts.indices.contains(Int(seq) - 1) && texts[Int(seq) - 1] == text) }
            orders.append(texts)
            await reader.close()
        }
        #expect(orders.allSatisfy { $0 == orders[0] })
        await ada.close()
        await bob.close()
        for node in nodes { node.stop() }
    }

    func fnv1a(_ text: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        return hash
    }
}

/// Acknowledged messages by seq, recorded from the sending task.
final class AcknowledgedBySeq: Sendable {
    private let bySeq = Mutex<[UInt64: String]>([:])
    func record(_ seq: UInt64, _ text: String) { bySeq.withLock { $0[seq] = text } }
    var all: [UInt64: String] { bySeq.withLock { $0 } }
}
