import Foundation
import Logging
import NIOPosix
import SwiftProtobuf
import WarblerChat
import WarblerCluster
import WarblerRaft
import WarblerStorage
import WarblerWire

/// One Warbler node's chat core: its RocksDB database, its Raft group (a one-voter cluster until the cluster
/// runtime arrives), the chat state, sessions and delivery. The gateway and the CLI drive it.
public final class ChatNode: Sendable {
    /// The single group of a single node. The cluster runtime replaces it with a metadata group and partitions.
    public static let groupID: UInt32 = 0

    public let configuration: NodeConfiguration
    public let queries: ChatQueries
    let database: Database
    let driver: GroupDriver<ChatGroup>
    let sessions: SessionStore
    let throttle: LoginThrottle
    let registry: SessionRegistry
    /// Blocking work (RocksDB reads, scrypt) runs here, never on an event loop.
    let threadPool: NIOThreadPool
    let logger: Logger

    /// Opens (or creates) the node's data and starts its group.
    ///
    /// - Throws: ``StorageError`` (`storage.locked` when another process has the data directory open).
    public init(configuration: NodeConfiguration, logger: Logger) throws {
        try configuration.validate()
        self.configuration = configuration
        self.logger = logger
        try FileManager.default.createDirectory(atPath: configuration.dataDirectory, withIntermediateDirectories: true)
        var options = Database.Options()
        options.columnFamilies = ["raft", "chat"]
        database = try Database(path: configuration.dataDirectory + "/db", options: options)
        let raftFamily = try database.columnFamily("raft")
        let chatFamily = try database.columnFamily("chat")
        let log = try RaftLogStore(database: database, family: raftFamily, group: Self.groupID)
        if log.isEmpty {
            let batch = WriteBatch()
            try log.bootstrap(ConfState(voters: [configuration.nodeID]), into: batch)
            try database.write(batch, sync: true)
            logger.info("bootstrapped a one-voter cluster", metadata: ["node.id": "\(configuration.nodeID)"])
        }
        var limits = ChatLimits()
        limits.maxPayloadBytes = configuration.limits.maxPayloadBytes
        queries = ChatQueries(database: database, family: chatFamily, limits: limits)
        sessions = SessionStore(lifetimeSeconds: configuration.security.sessionLifetimeSeconds)
        throttle = LoginThrottle(
            maxFailures: configuration.security.maxFailedLogins,
            lockoutSeconds: configuration.security.lockoutSeconds
        )
        let registry = SessionRegistry(queries: queries)
        self.registry = registry
        threadPool = NIOThreadPool(numberOfThreads: 2)
        threadPool.start()
        let machine = ChatGroup(
            machine: ChatStateMachine(group: Self.groupID, limits: limits),
            database: database,
            family: chatFamily
        )
        driver = try GroupDriver(
            group: Self.groupID,
            nodeID: configuration.nodeID,
            database: database,
            log: log,
            machine: machine,
            logger: logger,
            onApplied: { outcomes in registry.deliver(outcomes) }
        )
        driver.start()
    }

    /// Stops the group and the thread pool. Pending proposals fail.
    public func stop() {
        driver.stop()
        try? threadPool.syncShutdownGracefully()
    }

    /// Group-commit statistics of the node's group.
    public var statistics: (syncedBatches: Int, appliedEntries: Int) { driver.statistics }

    /// Proposes a command stamped with the current time and waits for its outcome.
    func run(_ body: ChatCommand.OneOf_Body) async throws -> ApplyOutcome {
        try await driver.propose(Self.encode(body))
    }

    static func encode(_ body: ChatCommand.OneOf_Body) -> [UInt8] {
        var command = ChatCommand()
        command.timeUnixMs = Int64(Date().timeIntervalSince1970 * 1000)
        command.body = body
        // Serializing a generated message cannot fail.
        return try! command.serializedBytes()
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
