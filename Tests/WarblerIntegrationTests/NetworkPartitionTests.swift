import Foundation
import Testing
import WarblerClient
import WarblerWire

#if canImport(Glibc)
import Glibc
#endif

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

    /// Delay proxies (`cluster/delay-proxy.py`) started by ``addDelays(_:peerPorts:)``.
    private var proxies: [Process] = []

    /// Emulates wide-area round trips between nodes: inside node i's namespace, node j's advertised peer
    /// address becomes a local proxy that forwards to j's listener (reached on `10.93.0.j`) after
    /// `oneWayMilliseconds[i][j]` in each direction. (This VM's kernel has no sch_netem for `tc netem`.)
    func addDelays(_ oneWayMilliseconds: [[Int]], peerPorts: [Int]) throws {
        let script = NodeProcess.packageRoot.appendingPathComponent("cluster/delay-proxy.py").path
        for node in 1...size {
            let ns = namespace(node)
            try ip("-n", ns, "addr", "add", "10.93.0.\(node)/24", "dev", "peer0")
            // Answer ARP only for addresses on the asking interface: the aliases below must stay local.
            try run(
                "/usr/sbin/ip",
                "netns",
                "exec",
                ns,
                "sh",
                "-c",
                "echo 1 >/proc/sys/net/ipv4/conf/all/arp_ignore; echo 2 >/proc/sys/net/ipv4/conf/all/arp_announce"
            )
        }
        for from in 1...size {
            for to in 1...size where to != from {
                try ip("-n", namespace(from), "addr", "add", peerAddress(to) + "/32", "dev", "lo")
                let proxy = Process()
                proxy.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
                proxy.arguments = [
                    "netns", "exec", namespace(from), "python3", script, "\(peerAddress(to)):\(peerPorts[to - 1])",
                    "10.93.0.\(to):\(peerPorts[to - 1])", "\(oneWayMilliseconds[from - 1][to - 1])",
                ]
                proxy.standardOutput = FileHandle.nullDevice
                proxy.standardError = FileHandle.nullDevice
                try proxy.run()
                proxies.append(proxy)
            }
        }
        // Wait until every proxy listens.
        for from in 1...size {
            for to in 1...size where to != from {
                var ready = false
                for _ in 0..<100 where !ready {
                    ready =
                        (try? run(
                            "/usr/sbin/ip",
                            "netns",
                            "exec",
                            namespace(from),
                            "python3",
                            "-c",
                            "import socket; socket.create_connection(('\(peerAddress(to))', \(peerPorts[to - 1])), 1)"
                        )) != nil
                    if !ready { usleep(50_000) }
                }
            }
        }
    }

    deinit {
        for proxy in proxies where proxy.isRunning {
            // SIGKILL: the test runner ignores SIGTERM, and ignored signals are inherited by children.
            kill(proxy.processIdentifier, SIGKILL)
            proxy.waitUntilExit()
        }
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

    func ip(_ arguments: String...) throws { try run(["/usr/sbin/ip"] + arguments) }

    func run(_ arguments: String...) throws { try run(arguments) }

    func run(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: arguments[0])
        process.arguments = Array(arguments.dropFirst())
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw TestFailure("\(arguments.joined(separator: " ")): \(String(decoding: data, as: UTF8.self))")
        }
    }
}

/// Part of ``ClusterTests`` so that multi-node tests run one at a time (two clusters at once on two cores made
/// timing-sensitive assertions flaky).
extension ClusterTests {
    /// Three nodes, each in its own namespace of `network`, with regions when given.
    static func nodes(in network: PartitionNetwork, regions: [String] = []) throws -> [NodeProcess] {
        try (1...network.size).map { index -> NodeProcess in
            let node = try NodeProcess(nodeID: UInt64(index))
            node.namespace = network.namespace(index)
            node.clientHost = network.clientAddress(index)
            node.peerHost = network.peerAddress(index)
            node.serveArguments =
                [
                    "--host", network.clientAddress(index), "--peer-host", "0.0.0.0", "--advertise",
                    network.peerAddress(index),
                ] + (regions.isEmpty ? [] : ["--region", regions[index - 1]])
            return node
        }
    }

    /// Starts node 1 (with the accounts), joins the others, waits for every group to have all three.
    static func form(_ nodes: [NodeProcess], users: [String]) async throws {
        for user in users { try await nodes[0].addUser(user, password: password) }
        try await nodes[0].start()
        for node in nodes[1...] {
            try await node.issueCertificate(caDirectory: nodes[0].dataDirectory + "/ca")
            try await node.start(join: nodes[0].peerAddress)
        }
        try await ClusterTests().waitForMembership(Set(nodes.map(\.nodeID)), asSeenBy: nodes[0])
    }

    @Test func acrossRegionsMessagesCommitAndDeliverAtTheTopologysLatency() async throws {
        let network = try PartitionNetwork(size: 3)
        let nodes = try Self.nodes(in: network, regions: ["eu", "us", "ap"])
        // Round trips eu–us 40 ms, eu–ap 90 ms, us–ap 150 ms.
        let oneWay = [[0, 20, 45], [20, 0, 75], [45, 75, 0]]
        try network.addDelays(oneWay, peerPorts: nodes.map(\.peerPort))
        try await Self.form(nodes, users: ["ada", "bob"])
        let (ada, _) = try await nodes[0].login("ada", password: Self.password)
        let direct = try await ada.createDirect(with: "bob")
        await ada.close()
        let (bob, bobEvents) = try await nodes[2].login("bob", password: Self.password)
        let partition = ClusterTests.partition(of: direct.conversationID)
        let leaderID = await ClusterTests().leader(of: partition, among: nodes)
        try #require(leaderID != 0)
        var sent = 0
        var medians: [String: Double] = [:]
        for (index, region) in ["eu", "us", "ap"].enumerated() {
            let (sender, _) = try await nodes[index].login("ada", password: Self.password)
            var latencies: [Double] = []
            for message in 1...10 {
                let start = Date()
                _ = try await sender.send(Data("\(region) \(message)".utf8), to: direct.conversationID)
                latencies.append(Date().timeIntervalSince(start) * 1000)
                sent += 1
            }
            await sender.close()
            medians[region] = latencies.sorted()[latencies.count / 2]
        }
        print("cluster: cross-region ack p50 (leader of the partition: node \(leaderID)): \(medians)")
        // A commit needs the leader and its nearest follower: never less than the shortest round trip (40 ms).
        for (region, median) in medians { #expect(median >= 38, "\(region): \(median) ms is faster than the network") }
        // Messages sent through every region reach bob in ap, in order.
        #expect(await bobEvents.waitForMessages(sent, seconds: 20))
        #expect(bobEvents.messages.map(\.seq) == Array(1...UInt64(sent)))
        await bob.close()
        for node in nodes { node.stop() }
    }

    @Test func aCutOffNodeKeepsNoLeaderAndAcceptsNoWriteWhileTheMajorityCarriesOn() async throws {
        let network = try PartitionNetwork(size: 3)
        let nodes = try Self.nodes(in: network)
        try await Self.form(nodes, users: ["ada", "bob"])
        let tests = ClusterTests()
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
        let leaderID = await tests.leader(of: partition, among: nodes)
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
            let record = try await cutOff.clusterStatus().groups.first { $0.group == partition }
            return record?.leader == 0
        }
        let seen: String
        do {
            let record = try await cutOff.clusterStatus().groups.first { $0.group == partition }
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
        let newLeader = await tests.leader(of: partition, among: majority)
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
        // The healed node hears from the leader again within seconds: a member connection that went silent during
        // the cut was closed and is dialled again (rather than waiting for TCP's retransmission schedule).
        let rejoined = try await tests.eventually(seconds: 10) {
            let record = try await cutOff.clusterStatus().groups.first { $0.group == partition }
            return record?.leader == newLeader
        }
        #expect(rejoined, "the healed node did not hear from the leader of partition \(partition) within 10 s")
        #expect(cutOff.log.contains("peer connection silent"), "no silent member connection was closed")
        try await tests.verify(direct.conversationID, on: nodes, acknowledged: acknowledged)
        let (reader, _) = try await cutOff.login("bob", password: Self.password)
        let page = try await reader.history(of: direct.conversationID, limit: 100)
        #expect(!page.messages.contains { String(decoding: $0.payload, as: UTF8.self) == "from the minority" })
        #expect(page.messages.count == 30)
        await reader.close()
        for node in nodes { node.stop() }
    }
}
