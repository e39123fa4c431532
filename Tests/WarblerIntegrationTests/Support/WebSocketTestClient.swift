import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import Synchronization
import WarblerWire

/// A minimal WebSocket client for tests (what a browser does): upgrade on /v1, then send and collect messages.
final class WebSocketTestClient: Sendable {
    let channel: any Channel
    let received: Collector
    private let group: MultiThreadedEventLoopGroup

    final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = WebSocketFrame
        private let frames = Mutex<[WebSocketFrame]>([])

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let frame = unwrapInboundIn(data)
            frames.withLock { $0.append(frame) }
        }

        var all: [WebSocketFrame] { frames.withLock { $0 } }
    }

    private final class UpgradeRequester: ChannelInboundHandler, RemovableChannelHandler, Sendable {
        typealias InboundIn = HTTPClientResponsePart
        typealias OutboundOut = HTTPClientRequestPart
        let host: String

        init(host: String) { self.host = host }

        func channelActive(context: ChannelHandlerContext) {
            var headers = HTTPHeaders()
            headers.add(name: "Host", value: host)
            headers.add(name: "Content-Length", value: "0")
            let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/v1", headers: headers)
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }

    private init(channel: any Channel, received: Collector, group: MultiThreadedEventLoopGroup) {
        self.channel = channel
        self.received = received
        self.group = group
    }

    static func connect(port: Int) async throws -> WebSocketTestClient {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let collector = Collector()
        let upgraded = group.next().makePromise(of: Void.self)
        let bootstrap = ClientBootstrap(group: group).channelInitializer { channel in
            let requester = UpgradeRequester(host: "127.0.0.1:\(port)")
            let upgrader = NIOWebSocketClientUpgrader(
                maxFrameSize: 1 << 22,
                automaticErrorHandling: true,
                upgradePipelineHandler: { channel, _ in
                    channel.pipeline.addHandler(collector).map { upgraded.succeed() }
                }
            )
            return channel.pipeline.addHTTPClientHandlers(
                withClientUpgrade: (
                    upgraders: [upgrader],
                    completionHandler: { context in
                        context.pipeline.syncOperations.removeHandler(requester, promise: nil)
                    }
                )
            ).flatMap { channel.pipeline.addHandler(requester) }
        }
        let channel = try await bootstrap.connect(host: "127.0.0.1", port: port).get()
        try await upgraded.futureResult.get()
        return WebSocketTestClient(channel: channel, received: collector, group: group)
    }

    func sendBinary(_ frame: Warbler_V1_ClientFrame) {
        let body = FrameCodec.encode(frame, allocator: channel.allocator)
        channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .binary, maskKey: .random(), data: body), promise: nil)
    }

    func sendText(_ text: String) {
        channel.writeAndFlush(
            WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: ByteBuffer(string: text)),
            promise: nil
        )
    }

    /// Waits for a frame matching `predicate`, returning it.
    func wait(seconds: Double = 10, for predicate: (WebSocketFrame) -> Bool) async -> WebSocketFrame? {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let frame = received.all.first(where: predicate) { return frame }
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
        return received.all.first(where: predicate)
    }

    func close() async {
        try? await channel.close()
        try? await group.shutdownGracefully()
    }
}
