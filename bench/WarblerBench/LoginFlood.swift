import Foundation
import NIOCore
import NIOPosix
import Synchronization
import WarblerWire

/// `--login-flood N`: N connections from one source address that log in with wrong passwords for names no
/// account has, one attempt after another on each (the next as soon as the last is answered), for as long as
/// the run lasts — an attack on the node's password checks while the scenario measures what its users see.
/// A connection the node closes (after its login timeout) is opened again.
final class LoginFlood: Sendable {
    /// What the flood saw, for the report.
    struct Summary: Codable, Sendable {
        var connections: Int
        var source: String
        var seconds: Double
        /// Logins answered per second.
        var answeredPerSecond: Double
        /// Answered `auth.invalid_credentials` (or `auth.locked_out`): the node checked the password.
        var checked: Int
        /// Answered `node.rate_limited`: refused without checking.
        var refused: Int
        /// Any other answer (none expected).
        var other: Int

        enum CodingKeys: String, CodingKey {
            case connections, source, seconds, checked, refused, other
            case answeredPerSecond = "answered_per_second"
        }
    }

    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private let connections: Int
    private let source: String
    private let targets: [Fleet.Target]
    private let started = monotonicNanoseconds()
    private let stopped = Atomic<Bool>(false)
    private let checked = Atomic<Int>(0)
    private let refused = Atomic<Int>(0)
    private let other = Atomic<Int>(0)
    private let channels = Mutex<[ObjectIdentifier: any Channel]>([:])
    private let loops = Mutex<[Task<Void, Never>]>([])

    /// Starts `connections` flooding connections from `source` (a local address), spread over `targets`.
    init(connections: Int, from source: String, to targets: [Fleet.Target]) {
        self.connections = connections
        self.source = source
        self.targets = targets
        let tasks = (0..<connections).map { index in
            Task { [self] in await keepFlooding(to: targets[index % targets.count]) }
        }
        loops.withLock { $0 = tasks }
    }

    /// Opens a flooding connection, waits until it closes, and opens another, until ``stop()``.
    private func keepFlooding(to target: Fleet.Target) async {
        while !stopped.load(ordering: .relaxed) {
            let closed = group.next().makePromise(of: Void.self)
            let handler = WrongLoginHandler(flood: self, closed: closed)
            do {
                let channel = try await ClientBootstrap(group: group)
                    .channelOption(.socketOption(.so_reuseaddr), value: 1)
                    .bind(to: try SocketAddress(ipAddress: source, port: 0))
                    .channelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(
                                ByteToMessageHandler(FrameDecoder(maxFrameBytes: 1 << 20))
                            )
                            try channel.pipeline.syncOperations.addHandler(handler)
                        }
                    }
                    .connect(host: target.host, port: target.port).get()
                let key = ObjectIdentifier(channel)
                channels.withLock { $0[key] = channel }
                // Stopped while connecting: nothing else closes this one.
                if stopped.load(ordering: .relaxed) { channel.close(promise: nil) }
                try? await closed.futureResult.get()
                channels.withLock { $0[key] = nil }
            } catch {
                closed.succeed(())
                try? await Task.sleep(nanoseconds: 100_000_000)
            }
        }
    }

    func note(_ error: Warbler_V1_Error?) {
        switch error?.code {
        case ErrorCode.invalidCredentials.rawValue?, ErrorCode.lockedOut.rawValue?:
            checked.add(1, ordering: .relaxed)
        case ErrorCode.rateLimited.rawValue?: refused.add(1, ordering: .relaxed)
        default: other.add(1, ordering: .relaxed)
        }
    }

    var isStopped: Bool { stopped.load(ordering: .relaxed) }

    /// Stops the flood, closes its connections, and says what it saw.
    func stop() async -> Summary {
        stopped.store(true, ordering: .relaxed)
        let seconds = Double(monotonicNanoseconds() - started) / 1e9
        for channel in channels.withLock({ Array($0.values) }) { channel.close(promise: nil) }
        for task in loops.withLock({ $0 }) { await task.value }
        try? await group.shutdownGracefully()
        let checked = checked.load(ordering: .relaxed)
        let refused = refused.load(ordering: .relaxed)
        let other = other.load(ordering: .relaxed)
        return Summary(
            connections: connections,
            source: source,
            seconds: seconds,
            answeredPerSecond: Double(checked + refused + other) / seconds,
            checked: checked,
            refused: refused,
            other: other
        )
    }
}

/// Sends Hello, then a login with a wrong password for a new random name each time the last is answered.
final class WrongLoginHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer

    private let flood: LoginFlood
    private let closed: EventLoopPromise<Void>
    private var nextID: UInt64 = 1

    init(flood: LoginFlood, closed: EventLoopPromise<Void>) {
        self.flood = flood
        self.closed = closed
    }

    private func write(_ context: ChannelHandlerContext, _ body: Warbler_V1_ClientFrame.OneOf_Body) {
        var frame = Warbler_V1_ClientFrame()
        frame.requestID = nextID
        nextID += 1
        frame.body = body
        context.writeAndFlush(
            NIOAny(FrameCodec.lengthPrefixed(frame, allocator: context.channel.allocator)),
            promise: nil
        )
    }

    private func login(_ context: ChannelHandlerContext) {
        write(
            context,
            .login(
                .with {
                    $0.user = "flood-\(UInt64.random(in: 0..<UInt64.max))"
                    $0.password = "not the password"
                }
            )
        )
    }

    func channelActive(context: ChannelHandlerContext) {
        write(
            context,
            .hello(
                .with {
                    $0.protocolVersion = ProtocolLimits.currentVersion
                    $0.clientName = "warbler-bench login flood"
                }
            )
        )
        login(context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let frame = try? FrameCodec.decodeServerFrame(unwrapInboundIn(data)), frame.requestID > 1 else {
            return
        }
        if case .error(let error) = frame.body { flood.note(error) } else { flood.note(nil) }
        if !flood.isStopped { login(context) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed.succeed(())
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
