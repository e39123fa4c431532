import ArgumentParser
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import WarblerServer

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run a node (a one-voter cluster) in the foreground.")

    @Option(help: "Data directory.") var data = "./data"
    @Option(help: "Address to listen on for clients (0.0.0.0 for every interface).") var host = "127.0.0.1"
    @Option(help: "Client TCP port.") var port = 7400
    @Option(help: "WebSocket port (ws://HOST:PORT/v1).") var websocketPort = 7401
    @Option(help: "Log level: trace, debug, info, notice, warning, error.") var logLevel = "info"

    func run() async throws {
        var logger = Logger(label: "warbler")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        var configuration = NodeConfiguration()
        configuration.dataDirectory = data
        configuration.network.host = host
        configuration.network.clientPort = port
        configuration.network.webSocketPort = websocketPort
        let node: ChatNode
        do {
            node = try ChatNode(configuration: configuration, logger: logger)
        } catch {
            throw CommandFailure("cannot open the node's data in \(data): \(error)")
        }
        defer { node.stop() }
        if try !node.hasAccounts() {
            print(
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
        try await eventLoops.shutdownGracefully()
    }
}
