import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import ServiceLifecycle
import WarblerCluster
import WarblerWire

/// The WebSocket listener (`ws://HOST:7401/v1`): after the HTTP upgrade, each binary message carries one frame's
/// protobuf bytes and each text message its protobuf JSON mapping. Same session logic as TCP.
public final class WebSocketListener: Service, Sendable {
    /// The path clients upgrade on.
    public static let path = "/v1"

    private let node: ChatNode
    private let group: MultiThreadedEventLoopGroup
    private let logger: Logger

    public init(node: ChatNode, eventLoopGroup: MultiThreadedEventLoopGroup, logger: Logger) {
        self.node = node
        self.group = eventLoopGroup
        self.logger = logger
    }

    /// Binds the listener and returns its channel.
    public func bind() async throws -> any Channel {
        let node = self.node
        let logger = self.logger
        let maxFrame = node.configuration.limits.maxFrameBytes
        let bootstrap = ServerBootstrap.warblerListener(group: group, logger: logger, listener: "websocket")
            .childChannelInitializer { channel in
                guard let admission = node.admitClient(channel) else {
                    return channel.eventLoop.makeFailedFuture(ConnectionGate.Full())
                }
                // A connection that never completes its upgrade is closed like one that never logs in (after the
                // upgrade, the client handler's own login deadline takes over).
                let loginTimeout = TimeAmount.seconds(Int64(node.configuration.security.loginTimeoutSeconds))
                let upgradeDeadline = channel.eventLoop.scheduleTask(in: loginTimeout) { channel.close(promise: nil) }
                // Text messages carry JSON (base64 payloads grow by a third): allow twice the binary limit.
                let upgrader = NIOWebSocketServerUpgrader(
                    maxFrameSize: 2 * maxFrame,
                    automaticErrorHandling: true,
                    shouldUpgrade: { channel, head in
                        channel.eventLoop.makeSucceededFuture(head.uri == Self.path ? HTTPHeaders() : nil)
                    },
                    upgradePipelineHandler: { channel, _ in
                        upgradeDeadline.cancel()
                        return channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(
                                WebSocketAdapter(maxFrameBytes: 2 * maxFrame)
                            )
                            try channel.pipeline.syncOperations.addHandler(
                                ClientChannelHandler(
                                    node: node,
                                    format: .webSocketBinary,
                                    admission: admission,
                                    logger: logger
                                )
                            )
                        }
                    }
                )
                let rejector = UpgradeRequiredResponder()
                return channel.pipeline.configureHTTPServerPipeline(
                    withServerUpgrade: (
                        upgraders: [upgrader],
                        completionHandler: { context in
                            context.pipeline.syncOperations.removeHandler(rejector, promise: nil)
                        }
                    )
                ).flatMapThrowing {
                    try channel.pipeline.syncOperations.addHandler(rejector)
                }
            }
        let network = node.configuration.network
        return try await bootstrap.bind(host: network.host, port: network.webSocketPort).get()
    }

    public func run() async throws {
        let channel = try await bind()
        logger.info(
            "listening for WebSocket clients",
            metadata: ["address": "\(channel.localAddress.map { "\($0)" } ?? "?")"]
        )
        try await gracefulShutdown()
        try await channel.close()
    }
}

/// Answers plain HTTP requests (anything that is not a WebSocket upgrade on ``WebSocketListener/path``) with
/// `426 Upgrade Required`.
final class UpgradeRequiredResponder: ChannelInboundHandler, RemovableChannelHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .end = unwrapInboundIn(data) else { return }
        let body = "Warbler speaks WebSocket on \(WebSocketListener.path) here (see docs/protocol.md).\n"
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
        headers.add(name: "Content-Length", value: "\(body.utf8.count)")
        headers.add(name: "Connection", value: "close")
        let head = HTTPResponseHead(version: .http1_1, status: .upgradeRequired, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}
