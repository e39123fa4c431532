import ArgumentParser
import Foundation
import Logging
import NIOPosix
import SwiftProtobuf
import WarblerCluster
import WarblerServer
import WarblerWire

struct Cluster: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create and operate a cluster.",
        subcommands: [Init.self, Status.self, Remove.self, TransferLeader.self, PreferRegion.self]
    )

    struct Init: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Initialise a new cluster in an empty data directory (its first node), then exit.",
            discussion: "Creates a CA in DATA/ca and this node's certificate in DATA/certs unless --certs is given."
        )
        @OptionGroup var node: NodeOptions
        @Option(help: "Partitions (fixed for the cluster's lifetime).") var partitions: UInt32 = 64
        @Option(help: "Replicas per partition.") var replication: UInt32 = 3

        func run() async throws {
            var configuration = try node.configuration()
            configuration.cluster.partitionCount = partitions
            configuration.cluster.replicationFactor = replication
            let existing = FileManager.default.fileExists(atPath: node.data + "/db")
            if existing {
                throw CommandFailure("\(node.data) already holds a node's data; a cluster is initialised once")
            }
            let chatNode = try ChatNode(configuration: configuration, logger: Logger(label: "warbler"))
            chatNode.stop()
            print("initialised a cluster in \(node.data); start it with: warbler serve --data \(node.data)")
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show nodes, regions and every group's leader and lag."
        )
        @OptionGroup var peer: PeerOptions
        @Flag(help: "Print JSON for scripts.") var json = false

        func run() async throws {
            let response = try await peer.request(.status(Warbler_Peer_V1_StatusRequest()))
            guard case .status(let status) = response.body else {
                throw CommandFailure("unexpected answer: \(response)")
            }
            if json {
                var options = JSONEncodingOptions()
                options.alwaysPrintInt64sAsNumbers = true
                print(try status.jsonString(options: options))
            } else {
                print(Self.describe(status))
            }
        }

        static func describe(_ status: ClusterStatus) -> String {
            var lines = [
                "cluster \(status.clusterID)  (answered by node \(status.nodeID); \(status.partitionCount) partitions, "
                    + "replication \(status.replicationFactor))",
                "",
                "NODE  STATE    REGION      PEER                   CLIENTS                LEADS",
            ]
            var leads: [UInt64: Int] = [:]
            for group in status.groups where group.leader != 0 { leads[group.leader, default: 0] += 1 }
            for node in status.nodes {
                let state = node.state == .active ? "active" : node.state == .leaving ? "leaving" : "removed"
                lines.append(
                    pad("\(node.nodeID)", 6) + pad(state, 9) + pad(node.region.isEmpty ? "-" : node.region, 12)
                        + pad(node.peerAddress, 23) + pad(node.clientAddress, 23) + "\(leads[node.nodeID] ?? 0)"
                )
            }
            if !status.preferredLeaderRegion.isEmpty {
                let preferences = status.preferredLeaderRegion.keys.sorted().map {
                    "\($0 == 0 ? "meta" : "\($0)")→\(status.preferredLeaderRegion[$0]!)"
                }
                lines += ["", "preferred leader regions: " + preferences.joined(separator: " ")]
            }
            let quiet = status.groups.filter(\.quiet).count
            lines += ["", "\(quiet) of \(status.groups.count) groups are quiet (idle: no heartbeats, no ticks)"]
            lines += ["", "GROUP  LEADER  TERM  COMMIT   APPLIED  VOTERS      LEARNERS  LAG (leader's view)"]
            for group in status.groups {
                let lag = group.lag.keys.sorted().map { "\($0):\(group.lag[$0]!)" }.joined(separator: " ")
                lines.append(
                    pad(group.group == 0 ? "meta" : "\(group.group)", 7) + pad("\(group.leader)", 8)
                        + pad("\(group.term)", 6) + pad("\(group.commit)", 9) + pad("\(group.applied)", 9)
                        + pad(group.voters.map(String.init).joined(separator: ","), 12)
                        + pad(group.learners.isEmpty ? "-" : group.learners.map(String.init).joined(separator: ","), 10)
                        + (lag.isEmpty ? "-" : lag)
                )
            }
            return lines.joined(separator: "\n")
        }

        static func pad(_ text: String, _ width: Int) -> String {
            text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove a node: its replicas move to the other nodes first, then it leaves every group."
        )
        @Argument(help: "The node's id.") var id: UInt64
        @OptionGroup var peer: PeerOptions

        func run() async throws {
            var remove = Warbler_Peer_V1_RemoveNode()
            remove.nodeID = id
            let response = try await peer.request(.removeNode(remove))
            if case .error(let error) = response.body { throw CommandFailure("\(error.code): \(error.message)") }
            print("node \(id) is leaving; watch `warbler cluster status` until it holds no replica")
        }
    }

    struct TransferLeader: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "transfer-leader",
            abstract: "Hand the leadership of a group to another of its voters."
        )
        @Option(help: "The group: 0 for the metadata group, 1… for partitions.") var group: UInt32
        @Option(help: "The node that should lead it.") var to: UInt64
        @OptionGroup var peer: PeerOptions

        func run() async throws {
            var transfer = Warbler_Peer_V1_TransferLeader()
            transfer.group = group
            transfer.to = to
            let response = try await peer.request(.transferLeader(transfer))
            if case .error(let error) = response.body { throw CommandFailure("\(error.code): \(error.message)") }
            print("asked group \(group) to hand its leadership to node \(to)")
        }
    }
}

extension Cluster {
    struct PreferRegion: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "prefer-region",
            abstract: "Keep the leaders of some groups in a region (their replicas include a node there).",
            discussion: "Clients in that region then commit with one round trip less. An empty --region clears it."
        )
        @Option(help: "A group (0 = metadata, 1… = partitions); repeatable.") var group: [UInt32] = []
        @Flag(help: "Every partition.") var allPartitions = false
        @Option(help: "The region label, as nodes were started with --region.") var region: String
        @OptionGroup var peer: PeerOptions

        func run() async throws {
            var groups = group
            if allPartitions {
                let response = try await peer.request(.status(Warbler_Peer_V1_StatusRequest()))
                guard case .status(let status) = response.body else { throw CommandFailure("unexpected answer") }
                groups += Array(1...max(1, status.partitionCount))
            }
            guard !groups.isEmpty else { throw ValidationError("give --group G or --all-partitions") }
            var preference = Warbler_Peer_V1_SetPreferredRegion()
            preference.groups = groups
            preference.region = region
            let response = try await peer.request(.setPreferredRegion(preference))
            if case .error(let error) = response.body { throw CommandFailure("\(error.code): \(error.message)") }
            print("leaders of \(groups.count) group(s) now prefer region '\(region)'")
        }
    }
}

/// How an operator command reaches a node: its peer port, authenticated with a certificate of the cluster.
struct PeerOptions: ParsableArguments {
    @Option(help: "A node's peer address.") var peer = "127.0.0.1:7500"
    @Option(help: "Certificate directory (a node's DATA/certs).") var certs = "./data/certs"

    func request(_ body: PeerRequest.OneOf_Body) async throws -> PeerResponse {
        var logger = Logger(label: "warbler")
        logger.logLevel = .error
        let loops = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let transport = try PeerTransport(
            nodeID: try ClusterCertificates.nodeID(inDirectory: certs),
            certificateDirectory: certs,
            group: loops,
            logger: logger
        )
        let result: Result<PeerResponse, any Error>
        do { result = .success(try await transport.request(body, address: peer)) } catch { result = .failure(error) }
        transport.shutdown()
        try? await loops.shutdownGracefully()
        do { return try result.get() } catch { throw CommandFailure("no answer from \(peer): \(error)") }
    }
}

/// The options that describe a node (serve and cluster init).
struct NodeOptions: ParsableArguments {
    @Option(help: "Data directory.") var data = "./data"
    @Option(help: "Address to listen on for clients and peers (0.0.0.0 for every interface).") var host = "127.0.0.1"
    @Option(help: "Client TCP port.") var port = 7400
    @Option(help: "WebSocket port (ws://HOST:PORT/v1).") var websocketPort = 7401
    @Option(help: "Peer (Raft, mutual TLS) port.") var peerPort = 7500
    @Option(help: "Address the peer listener binds (default: --host).") var peerHost: String?
    @Option(help: "This node's id at first start (afterwards the data directory's).") var nodeId: UInt64 = 1
    @Option(help: "The host other nodes and clients reach this node at (default: --host).") var advertise: String?
    @Option(help: "Region label; replicas spread over regions.") var region = ""
    @Option(help: "Certificate directory (default: DATA/certs).") var certs: String?

    func configuration() throws -> NodeConfiguration {
        var configuration = NodeConfiguration()
        configuration.dataDirectory = data
        configuration.network.host = host
        configuration.network.clientPort = port
        configuration.network.webSocketPort = websocketPort
        configuration.nodeID = nodeId
        configuration.cluster.peerPort = peerPort
        configuration.cluster.peerHost = peerHost
        configuration.cluster.advertiseHost = advertise
        configuration.cluster.region = region
        configuration.cluster.certificateDirectory = certs
        do { try configuration.validate() } catch { throw ValidationError("\(error)") }
        return configuration
    }
}
