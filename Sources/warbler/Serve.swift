import ArgumentParser
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import WarblerServer
import WarblerWire

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a node in the foreground.",
        discussion: """
            With an empty data directory and no --join, the node initialises a new cluster with itself as its \
            only member (a one-voter cluster). With --join, it never initialises anything: it asks that member \
            to add it, then receives its replicas.
            """
    )

    @OptionGroup var node: NodeOptions
    @Option(help: "Join the cluster a member at HOST:PEERPORT belongs to (first start only).") var join: String?
    @Option(help: "Drop a group's applied log entries once this many follow the log's start.")
    var compactAfter: UInt64 = 20_000
    @Option(
        help: """
            Client connections (TCP and WebSocket together) held at once (default: what the open-file limit \
            leaves once storage and the node's own files have their share).
            """
    )
    var maxConnections: Int?
    @Option(help: "Seconds a connection may take to log in before it is closed.") var loginTimeout = 30
    @Option(
        help:
            "Failed password logins a source address (IPv6: its /64) may make per minute, and at once, before its password logins are refused unchecked (0: no limit)."
    )
    var failedLoginsPerAddress = 30
    @Option(help: "Log level: trace, debug, info, notice, warning, error.") var logLevel = "info"

    func run() async throws {
        var logger = Logger(label: "warbler")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        var configuration = try self.node.configuration()
        configuration.cluster.join = join
        configuration.cluster.compactionEntries = compactAfter
        configuration.network.maxConnections = maxConnections
        configuration.security.loginTimeoutSeconds = loginTimeout
        configuration.security.failedLoginsPerAddressPerMinute = failedLoginsPerAddress
        do { try configuration.validate() } catch { throw ValidationError("\(error)") }
        let data = self.node.data
        // Raised here too (the node does it again, a no-op then) to log what the limit was before.
        let limitBefore = OpenFileLimit.raise().before
        let node: ChatNode
        do {
            node = try ChatNode(configuration: configuration, logger: logger)
        } catch let error as WireError {
            // The open-file limit cannot hold the node (or its --max-connections); nothing was opened.
            throw CommandFailure("\(error)")
        } catch {
            throw CommandFailure("cannot open the node's data in \(data): \(error)")
        }
        let budget = node.openFiles
        logger.notice(
            "open files",
            metadata: [
                "files.limit": "\(budget.limit)", "files.limit_before": "\(limitBefore)",
                "connections.max": "\(budget.maxClientConnections)", "storage.max_open_files": "\(budget.storageFiles)",
            ]
        )
        defer { node.stop() }
        do { try await node.start() } catch { throw CommandFailure("cannot start the node: \(error)") }
        if join == nil, try !node.hasAccounts() {
            // Written at once: with `print` it would only appear when the node stops, unless the output is a
            // terminal.
            writeToStandardOutput(
                """
                This node has no accounts yet. Stop it (Ctrl-C) and create the first administrator:

                    \(CommandLine.arguments[0]) user add NAME --role admin --data \(data)


                """
            )
        }
        let eventLoops = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        let listener = ClientListener(node: node, eventLoopGroup: eventLoops, logger: logger)
        let webSocket = WebSocketListener(node: node, eventLoopGroup: eventLoops, logger: logger)
        let services = ServiceGroup(
            configuration: .init(
                services: [listener, webSocket],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        try await services.run()
        // The node first, while the connections' event loops still run: the requests it fails on the way (a
        // password check waiting, a read) are answered on them, not scheduled on loops already gone.
        node.stop()
        try await eventLoops.shutdownGracefully()
    }
}
