import Foundation
import Testing
import WarblerClient
import WarblerWire

/// Network namespaces for a real network partition on one machine: each node gets a namespace with two
/// links — one to a "peer" bridge (Raft traffic), one to a "client" bridge — so that a node can be cut off from
/// the other nodes while its clients still reach it. Needs root (`ip netns`), as CI on this machine has.
final class PartitionNetwork {
    let tag = String(UInt32.random(in: 0x1000...0xFFFF), radix: 16)
    let size: Int
    var peerBridge: String { "wp\(tag)" }
    var clientBridge: String { "wc\(tag)" }
    func namespace(_ node: Int) -> String { "wt\(tag)n\(node)" }
    func peerLink(_ node: Int) -> String { "wp\(tag)n\(node)" }
    func peerAddress(_ node: Int) -> String { "10.91.0.\(node)" }
    func clientAddress(_ node: Int) -> String { "10.92.0.\(node)" }

    init(size: Int) throws {
        self.size = size
        for (bridge, address) in [(peerBridge, "10.91.0.254/24"), (clientBridge, "10.92.0.254/24")] {
            try ip("link", "add", bridge, "type", "bridge")
            try ip("addr", "add", address, "dev", bridge)
            try ip("link", "set", bridge, "up")
        }
        for node in 1...size {
            let ns = namespace(node)
            try ip("netns", "add", ns)
            try ip("link", "add", peerLink(node), "type", "veth", "peer", "name", "peer0", "netns", ns)
            try ip("link", "add", "wc\(tag)n\(node)", "type", "veth", "peer", "name", "client0", "netns", ns)
            try ip("link", "set", peerLink(node), "master", peerBridge, "up")
            try ip("link", "set", "wc\(tag)n\(node)", "master", clientBridge, "up")
            try ip("-n", ns, "addr", "add", peerAddress(node) + "/24", "dev", "peer0")
            try ip("-n", ns, "addr", "add", clientAddress(node) + "/24", "dev", "client0")
            for link in ["peer0", "client0", "lo"] { try ip("-n", ns, "link", "set", link, "up") }
        }
    }

    deinit {
        for node in 1...size {
            try? ip("netns", "del", namespace(node))
            try? ip("link", "del", peerLink(node))
            try? ip("link", "del", "wc\(tag)n\(node)")
        }
        try? ip("link", "del", peerBridge)
        try? ip("link", "del", clientBridge)
    }

    /// Cuts `node` off the peer network (its clients still reach it).
    func isolate(_ node: Int) throws { try ip("link", "set", peerLink(node), "down") }
    func heal(_ node: Int) throws { try ip("link", "set", peerLink(node), "up") }

    func ip(_ arguments: String...) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw TestFailure("ip \(arguments.joined(separator: " ")): \(String(decoding: data, as: UTF8.self))")
        }
    }
}

@Suite(.serialized)
struct NetworkPartitionTests {
    static let password = ClusterTests.password

    @Test func aCutOffNodeKeepsNoLeaderAndAcceptsNoWriteWhileTheMajorityCarriesOn() async throws {
        let network = try PartitionNetwork(size: 3)
        let nodes = try (1...3).map { index -> NodeProcess in
            let node = try NodeProcess(nodeID: UInt64(index))
            node.namespace = network.namespace(index)
            node.clientHost = network.clientAddress(index)
            node.peerHost = network.peerAddress(index)
            node.serveArguments = [
                "--host", network.clientAddress(index), "--peer-host", "0.0.0.0", "--advertise",
                network.peerAddress(index),
            ]
            return node
        }
        for user in ["ada", "bob"] { try nodes[0].addUser(user, password: Self.password) }
        try await nodes[0].start()
        for node in nodes[1...] {
            try node.issueCertificate(caDirectory: nodes[0].dataDirectory + "/ca")
            try await node.start(join: nodes[0].peerAddress)
        }
        let tests = ClusterTests()
        try await tests.waitForMembership([1, 2, 3], asSeenBy: nodes[0])
        let (ada, _) = try await nodes[0].login("ada", password: Self.password)
        let direct = try await ada.createDirect(with: "bob")
        let acknowledged = AcknowledgedBySeq()
        for index in 1...5 {
            let ack = try await ada.send(Data("before \(index)".utf8), to: direct.conversationID)
            acknowledged.record(ack.seq, "before \(index)")
        }
        await ada.close()

        // Cut the partition's leader off from the other two nodes.
        let partition = ClusterTests.partition(of: direct.conversationID)
        let leaderID = tests.leader(of: partition, among: nodes)
        try #require(leaderID != 0)
        let cutOff = nodes[Int(leaderID) - 1]
        let majority = nodes.filter { $0.nodeID != leaderID }
        try network.isolate(Int(leaderID))
        defer { try? network.heal(Int(leaderID)) }

        // Its own client is still connected to it, but nothing it sends is acknowledged.
        let (isolatedClient, _) = try await cutOff.login("bob", password: Self.password, reconnect: false)
        await #expect(throws: (any Error).self) {
            _ = try await isolatedClient.send(
                Data("from the minority".utf8),
                to: direct.conversationID,
                clientMessageID: "minority"
            )
        }
        // The minority side keeps no leader; the majority elects one and carries on.
        let minorityHasNoLeader = try await tests.eventually(seconds: 15) {
            let record = try cutOff.clusterStatus().groups.first { $0.group == partition }
            return record?.leader == 0
        }
        let seen: String
        do {
            let record = try cutOff.clusterStatus().groups.first { $0.group == partition }
            seen = "\(String(describing: record))"
        } catch { seen = "\(error)" }
        #expect(minorityHasNoLeader, "the cut-off node still names a leader of partition \(partition): \(seen)")
        let (sender, _) = try await majority[0].login("ada", password: Self.password)
        for index in 1...20 {
            try await ClusterTests.sendUntilAcknowledged(
                "during the partition \(index)",
                id: "majority-\(index)",
                to: direct.conversationID,
                with: sender,
                into: acknowledged
            )
        }
        let newLeader = tests.leader(of: partition, among: majority)
        #expect(newLeader != 0 && newLeader != leaderID)
        await isolatedClient.close()

        // Healing loses nothing: the cut-off node catches up, and the minority's write never appears.
        try network.heal(Int(leaderID))
        for index in 21...25 {
            try await ClusterTests.sendUntilAcknowledged(
                "after healing \(index)",
                id: "majority-\(index)",
                to: direct.conversationID,
                with: sender,
                into: acknowledged
            )
        }
        await sender.close()
        try await tests.verify(direct.conversationID, on: nodes, acknowledged: acknowledged)
        let (reader, _) = try await cutOff.login("bob", password: Self.password)
        let page = try await reader.history(of: direct.conversationID, limit: 100)
        #expect(!page.messages.contains { String(decoding: $0.payload, as: UTF8.self) == "from the minority" })
        #expect(page.messages.count == 30)
        await reader.close()
        for node in nodes { node.stop() }
    }
}
