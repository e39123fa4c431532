import Crypto
import Foundation
import Logging
import NIOCore
import NIOPosix
import SwiftProtobuf
import Synchronization
import WarblerChat
import WarblerCluster
import WarblerRaft
import WarblerStorage
import WarblerWire

/// One Warbler node: its RocksDB database, the Raft groups it replicates (the metadata group and partitions,
/// driven by one ``RaftHost``), the peer transport, the chat state, sessions and delivery. The gateway and the
/// CLI drive it. A single node is a cluster of one: the same code path.
public final class ChatNode: Sendable {
    public let configuration: NodeConfiguration
    public let queries: ChatQueries
    /// This node's id (from the data directory once it belongs to a cluster).
    public let nodeID: UInt64
    /// How the node's open-file limit is shared between client connections, storage and the rest.
    public let openFiles: OpenFileBudget
    /// The client connections (TCP and WebSocket together) the node holds; it admits at most
    /// ``OpenFileBudget/maxClientConnections``.
    public let clientConnections: ConnectionGate
    let database: Database
    let host: RaftHost<ChatGroup>
    let transport: PeerTransport
    let clusterFamily: ColumnFamily
    let sessions: SessionStore
    let throttle: LoginThrottle
    /// Password checks, apart from the chat work and bounded.
    let verifier: PasswordVerifier
    /// Failed password logins per source address.
    let loginBudget: AddressLoginBudget
    /// Logins refused without a check, for the log's warning (at most every 10 s).
    let refusedLogins = Atomic<Int>(0)
    private let stopped = Atomic<Bool>(false)
    let refusedLoginReports = ReportThrottle()
    let registry: SessionRegistry
    /// Blocking work (RocksDB reads) runs here, never on an event loop; password checks have threads of their
    /// own (``verifier``).
    let threadPool: NIOThreadPool
    let peerEventLoops: MultiThreadedEventLoopGroup
    let logger: Logger
    /// Set when the data directory did not belong to a cluster yet and the node must join one.
    private let pendingJoin: String?

    /// Opens (or creates) the node's data. A node with an empty data directory initialises a new one-node
    /// cluster (with a new CA and certificate when it has none), unless `configuration.cluster.join` is set:
    /// then it never initialises anything and joins that cluster in ``start()``.
    ///
    /// The process's soft open-file limit is raised to its hard limit first (``OpenFileBudget``).
    ///
    /// - Throws: ``WireError`` `invalidArgument` when the open-file limit is too low for the node or for
    ///   `network.maxConnections`; ``StorageError`` (`storage.locked` when another process has the data
    ///   directory open), ``CertificateError`` when certificates are missing or name another node.
    public init(configuration: NodeConfiguration, logger: Logger) throws {
        try configuration.validate()
        self.configuration = configuration
        self.logger = logger
        openFiles = try OpenFileBudget(
            limit: OpenFileLimit.raise().limit,
            maxClientConnections: configuration.network.maxConnections
        )
        clientConnections = ConnectionGate(
            capacity: openFiles.maxClientConnections,
            logger: logger,
            warning: "turning client connections away: the node holds its maximum"
        )
        let fm = FileManager.default
        try fm.createDirectory(atPath: configuration.dataDirectory, withIntermediateDirectories: true)
        var options = Database.Options()
        options.columnFamilies = ["raft", "chat", "cluster"]
        options.maxOpenFiles = openFiles.storageFiles
        database = try Database(path: configuration.dataDirectory + "/db", options: options)
        let raftFamily = try database.columnFamily("raft")
        let chatFamily = try database.columnFamily("chat")
        clusterFamily = try database.columnFamily("cluster")
        let certificates = configuration.certificateDirectory
        var nodeID = configuration.nodeID
        var pendingJoin: String?
        if let identity = try RaftHost<ChatGroup>.identity(database: database, clusterFamily: clusterFamily) {
            nodeID = identity.node.nodeID
        } else if let join = configuration.cluster.join {
            pendingJoin = join
        } else {
            if !fm.fileExists(atPath: certificates + "/" + ClusterCertificates.nodeCertificateFile) {
                // A new cluster gets its own CA, kept apart from the node's certificates.
                let caDirectory = configuration.dataDirectory + "/ca"
                if !fm.fileExists(atPath: caDirectory + "/" + ClusterCertificates.caKeyFile) {
                    try ClusterCertificates.initCA(in: caDirectory)
                }
                try ClusterCertificates.issue(
                    node: nodeID,
                    caDirectory: caDirectory,
                    outputDirectory: certificates,
                    hosts: Array(Set(["localhost", "127.0.0.1", configuration.advertisedHost]))
                )
            }
            let clusterID = try RaftHost<ChatGroup>.initializeCluster(
                database: database,
                raftFamily: raftFamily,
                clusterFamily: clusterFamily,
                node: Self.nodeInfo(id: nodeID, configuration),
                partitionCount: configuration.cluster.partitionCount,
                replicationFactor: configuration.cluster.replicationFactor
            )
            logger.notice(
                "initialised a new cluster",
                metadata: [
                    "cluster.id": "\(clusterID)", "node.id": "\(nodeID)",
                    "partitions": "\(configuration.cluster.partitionCount)",
                ]
            )
        }
        let certified = try ClusterCertificates.nodeID(inDirectory: certificates)
        guard certified == nodeID else {
            throw CertificateError("\(certificates) holds the certificate of node \(certified), not of node \(nodeID)")
        }
        self.nodeID = nodeID
        self.pendingJoin = pendingJoin
        var limits = ChatLimits()
        limits.maxPayloadBytes = configuration.limits.maxPayloadBytes
        peerEventLoops = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        transport = try PeerTransport(
            nodeID: nodeID,
            certificateDirectory: certificates,
            group: peerEventLoops,
            logger: logger
        )
        let hostBox = HostBox()
        let queries = ChatQueries(database: database, family: chatFamily, limits: limits) {
            hostBox.host?.clusterView.info?.partitionCount ?? 0
        }
        self.queries = queries
        let sessions = SessionStore(lifetimeSeconds: configuration.security.sessionLifetimeSeconds)
        self.sessions = sessions
        throttle = LoginThrottle(
            maxFailures: configuration.security.maxFailedLogins,
            lockoutSeconds: configuration.security.lockoutSeconds
        )
        // Half the cores check passwords at most; the rest always have the chat work.
        verifier = PasswordVerifier(threads: max(1, ProcessInfo.processInfo.activeProcessorCount / 2))
        loginBudget = AddressLoginBudget(perMinute: configuration.security.failedLoginsPerAddressPerMinute)
        let registry = SessionRegistry(queries: queries)
        self.registry = registry
        threadPool = NIOThreadPool(numberOfThreads: 2)
        threadPool.start()
        let database = self.database
        let chatLimits = limits
        let metadataRestored: @Sendable () -> Void = {
            ChatNode.revalidate(sessions.recorded(), of: sessions, queries: queries, host: hostBox)
        }
        var hostOptions = RaftHost<ChatGroup>.Options()
        hostOptions.compactionEntries = configuration.cluster.compactionEntries
        host = try RaftHost(
            nodeID: nodeID,
            database: database,
            raftFamily: raftFamily,
            clusterFamily: clusterFamily,
            transport: transport,
            options: hostOptions,
            logger: logger,
            makeMachine: { group in
                ChatGroup(
                    machine: ChatStateMachine(group: group, limits: chatLimits),
                    database: database,
                    family: chatFamily,
                    // A snapshot of the metadata group (this replica fell far behind) may hold logouts that no
                    // applied command reported here.
                    onRestore: group == ChatPartitioning.metadataGroup ? metadataRestored : nil
                )
            },
            onApplied: { group, outcomes in
                // Sessions are recorded in the metadata group: one ended anywhere ends here too.
                if group == ChatPartitioning.metadataGroup { Self.endSessions(in: outcomes, of: sessions) }
                registry.deliver(outcomes)
            },
            completionScope: { OutboundRound.gather($0) }
        )
        hostBox.host = host
        transport.setDelegate(host.peerDelegate())
    }

    static func nodeInfo(id: UInt64, _ configuration: NodeConfiguration) -> NodeInfo {
        var node = NodeInfo()
        node.nodeID = id
        node.peerAddress = "\(configuration.advertisedHost):\(configuration.cluster.peerPort)"
        node.clientAddress = "\(configuration.advertisedHost):\(configuration.network.clientPort)"
        node.region = configuration.cluster.region
        return node
    }

    /// Starts listening for peers and driving the groups; joins the cluster first when the node is new.
    /// `listen: false` (offline administration of a stopped single node) skips the peer listener.
    ///
    /// - Throws: when the peer port cannot be bound, or the join is refused.
    public func start(listen: Bool = true) async throws {
        let cluster = configuration.cluster
        if listen {
            let channel = try await transport.bind(
                host: cluster.peerHost ?? configuration.network.host,
                port: cluster.peerPort,
                maxConnections: openFiles.maxPeerConnections
            )
            logger.info("listening for peers", metadata: ["address": "\(channel.localAddress.map { "\($0)" } ?? "?")"])
        }
        host.start()
        guard let seed = pendingJoin else {
            if listen { announceAddresses() }
            return
        }
        var join = Warbler_Peer_V1_Join()
        join.node = Self.nodeInfo(id: nodeID, configuration)
        var delay = Duration.milliseconds(200)
        while true {
            do {
                let response = try await transport.request(.join(join), address: seed)
                switch response.body {
                case .joinAccepted(let accepted):
                    transport.setClusterID(accepted.clusterID)
                    for node in accepted.nodes { transport.setAddress(node.peerAddress, for: node.nodeID) }
                    try RaftHost<ChatGroup>.recordMembership(
                        node: join.node,
                        clusterID: accepted.clusterID,
                        database: database,
                        clusterFamily: clusterFamily
                    )
                    logger.notice(
                        "joined the cluster",
                        metadata: ["cluster.id": "\(accepted.clusterID)", "node.id": "\(nodeID)", "seed": "\(seed)"]
                    )
                    return
                case .error(let error) where error.code == ClusterError.Code.refused.rawValue:
                    throw ClusterError(.refused, "the cluster refused this node: \(error.message)")
                default:
                    logger.warning("join not accepted yet; retrying", metadata: ["answer": "\(response)"])
                }
            } catch let error as ClusterError where error.code == .refused {
                throw error
            } catch {
                logger.warning("cannot join yet; retrying", metadata: ["seed": "\(seed)", "error": "\(error)"])
            }
            try await Task.sleep(for: delay)
            delay = min(delay * 2, .seconds(3))
        }
    }

    /// Records this node's current addresses and region in the cluster metadata when they changed (a node
    /// restarted with other ports, or initialised offline by `warbler user add`).
    private func announceAddresses() {
        let current = Self.nodeInfo(id: nodeID, configuration)
        guard let known = host.clusterView.nodes[nodeID],
            known.peerAddress != current.peerAddress || known.clientAddress != current.clientAddress
                || known.region != current.region
        else { return }
        var command = ClusterCommand()
        command.addNode.node = current
        Task { [host, logger] in
            do { try await host.propose(command) } catch {
                logger.warning("cannot record this node's new address yet", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Stops the groups, the transport and the thread pools; pending proposals and password checks fail. Call it
    /// while the event loops of the client connections still run (the failures are answered on them); a second
    /// call does nothing.
    public func stop() {
        guard !stopped.exchange(true, ordering: .relaxed) else { return }
        host.stop()
        transport.shutdown()
        try? threadPool.syncShutdownGracefully()
        verifier.shutdown()
        try? peerEventLoops.syncShutdownGracefully()
    }

    /// Group-commit statistics of the node's groups.
    public var statistics: (syncedBatches: Int, appliedEntries: Int) { host.statistics }

    /// The cluster as this node sees it (every group it replicates, leaders report lag).
    public func clusterStatus() async -> ClusterStatus { await host.status() }

    /// Forgets those of `candidates` (held before a snapshot replaced the metadata group's state) that the
    /// metadata group no longer records, once this replica has applied everything committed (a read barrier: the
    /// snapshot is written by then, and so is every login that `candidates` came from).
    private static func revalidate(
        _ candidates: [Session],
        of sessions: SessionStore,
        queries: ChatQueries,
        host: HostBox
    ) {
        guard !candidates.isEmpty else { return }
        Task {
            guard let host = host.host, (try? await host.readBarrier(group: ChatPartitioning.metadataGroup)) != nil
            else { return }
            for session in candidates {
                // A read that fails keeps the session (the next snapshot or resume looks again).
                if case .some(.none) = try? queries.session(tokenHash: session.tokenHash) {
                    sessions.revoke(session.token)
                }
            }
        }
    }

    /// Forgets the sessions that applied commands of the metadata group ended (logouts, a user's oldest sessions).
    static func endSessions(in outcomes: [ApplyOutcome], of sessions: SessionStore) {
        for outcome in outcomes {
            switch outcome {
            case .sessionStarted(_, let ended), .sessionEnded(_, let ended): sessions.revoke(hashes: ended)
            default: continue
            }
        }
    }

    /// The group a command goes to: accounts and sessions to the metadata group, the rest to the conversation's
    /// partition.
    func group(of body: ChatCommand.OneOf_Body) throws -> UInt32 {
        switch body {
        case .createAccount, .startSession, .endSession: return ChatPartitioning.metadataGroup
        case .createConversation(let create): return try queries.group(of: create.conversationID)
        case .addMembers(let add): return try queries.group(of: add.conversationID)
        case .removeMember(let remove): return try queries.group(of: remove.conversationID)
        case .postMessage(let post): return try queries.group(of: post.conversationID)
        case .markRead(let mark): return try queries.group(of: mark.conversationID)
        }
    }

    /// Proposes a command stamped with the current time and waits for its outcome.
    func run(_ body: ChatCommand.OneOf_Body) async throws -> ApplyOutcome {
        try await host.propose(Self.encode(body), to: try group(of: body))
    }

    static func encode(_ body: ChatCommand.OneOf_Body) -> [UInt8] {
        var command = ChatCommand()
        command.timeUnixMs = Int64(Date().timeIntervalSince1970 * 1000)
        command.body = body
        // Serializing a generated message cannot fail.
        return try! command.serializedBytes()
    }

    /// The id of the direct conversation between two users: the same from both sides and on every node, so
    /// that it is found again, never duplicated.
    static func directConversationID(_ a: String, _ b: String) -> String {
        let (low, high) = a < b ? (a, b) : (b, a)
        let digest = SHA256.hash(data: Array(low.utf8) + [0] + Array(high.utf8))
        return "d-" + digest.prefix(12).map { String(format: "%02x", $0) }.joined()
    }

    /// Creates an account (used by `warbler user add`). The name is the user's id and never changes.
    public func createAccount(name: String, password: String, role: Warbler_Chat_V1_Role) async throws -> AccountRecord
    {
        guard password.utf8.count >= 8 else {
            throw ChatError(.invalidArgument, "passwords have at least 8 characters")
        }
        let hash = try PasswordHasher.hash(password, costExponent: configuration.security.scryptCostExponent)
        let outcome = try await run(
            .createAccount(
                .with {
                    $0.userID = name
                    $0.name = name
                    $0.passwordHash = Data(hash)
                    $0.role = role
                }
            )
        )
        switch outcome {
        case .accountCreated(let record): return record
        case .refused(let error): throw error
        default: throw ChatError(.internalError, "unexpected outcome \(outcome)")
        }
    }

    /// True once at least one account exists.
    public func hasAccounts() throws -> Bool { try queries.hasAccounts() }
}

/// Lets the queries read the partition count from the host created after them.
private final class HostBox: Sendable {
    private let value = Mutex<RaftHost<ChatGroup>?>(nil)
    var host: RaftHost<ChatGroup>? {
        get { value.withLock { $0 } }
        set { value.withLock { $0 = newValue } }
    }
}
