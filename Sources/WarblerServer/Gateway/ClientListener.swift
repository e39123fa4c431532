import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import WarblerCluster
import WarblerWire

/// The client TCP listener: a service that accepts connections until graceful shutdown, then closes them.
public final class ClientListener: Service, Sendable {
    private let node: ChatNode
    private let group: MultiThreadedEventLoopGroup
    private let logger: Logger

    public init(node: ChatNode, eventLoopGroup: MultiThreadedEventLoopGroup, logger: Logger) {
        self.node = node
        self.group = eventLoopGroup
        self.logger = logger
    }

    /// Binds the listener; returns the bound channel (port 0 picks a free port).
    public func bind() async throws -> any Channel {
        let node = self.node
        let logger = self.logger
        let maxFrame = node.configuration.limits.maxFrameBytes
        let bootstrap = ServerBootstrap.warblerListener(group: group, logger: logger, listener: "clients")
            .childChannelInitializer { channel in
                guard let admission = node.admitClient(channel) else {
                    return channel.eventLoop.makeFailedFuture(ConnectionGate.Full())
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(LengthPrefixedFramer(maxFrameBytes: maxFrame))
                    try channel.pipeline.syncOperations.addHandler(
                        ClientChannelHandler(node: node, format: .lengthPrefixed, admission: admission, logger: logger)
                    )
                }
            }
        let network = node.configuration.network
        return try await bootstrap.bind(host: network.host, port: network.clientPort).get()
    }

    /// Serves until graceful shutdown.
    public func run() async throws {
        let channel = try await bind()
        logger.info("listening for clients", metadata: ["address": "\(channel.localAddress.map { "\($0)" } ?? "?")"])
        try await gracefulShutdown()
        logger.info("closing the client listener")
        try await channel.close()
    }
}

extension ServerBootstrap {
    /// The socket settings every Warbler client listener uses: a deep accept backlog, address reuse across
    /// restarts, no Nagle delay on small frames, and a pause in accepting when the node is out of file
    /// descriptors.
    static func warblerListener(group: MultiThreadedEventLoopGroup, logger: Logger, listener: String) -> ServerBootstrap
    {
        ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .sheddingConnectionsWhenOutOfFiles(logger: logger, listener: listener)
    }
}

extension ChatNode {
    /// Takes a place among the node's client connections for a connection just accepted, by either listener.
    /// Returns nil when it must be closed at once; a refused connection is closed after
    /// ``ConnectionGate/refusalGrace`` if it has not been answered and closed before.
    func admitClient(_ channel: any Channel) -> ConnectionGate.Admission? {
        switch clientConnections.admit(channel) {
        case .admitted: return .admitted
        case .dropped: return nil
        case .refused:
            channel.eventLoop.scheduleTask(in: ConnectionGate.refusalGrace) { channel.close(promise: nil) }
            return .refused
        }
    }
}
