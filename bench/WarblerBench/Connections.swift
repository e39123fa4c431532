import Foundation
import NIOCore
import NIOPosix
import Synchronization
import WarblerClient
import WarblerWire

#if canImport(Glibc)
import Glibc
#endif

/// C idle authenticated connections, spread over several 127.0.0.x source addresses (each address has its
/// own ~28,000 ephemeral ports), each resuming a session of one of a few bench users; then light traffic on
/// top. Reports the connect rate and the server memory each connection costs.
enum ConnectionsScenario {
    static let tokenUsers = 20
    static var users: [String] { (0..<tokenUsers).map { "bench-c\($0)" } }

    static func run(
        fleet: Fleet,
        connections requested: Int,
        sourceAddresses: Int,
        serverPIDs: [Int32],
        payloadBytes: Int,
        warmUp: Double,
        seconds: Double,
        progress: Bool,
        onStart: (RunCounters) -> Void
    ) async throws -> (RunCounters, ScenarioExtras) {
        // Every connection is a descriptor here and on the node: stay inside the open-file limit (raising it
        // needs CAP_SYS_RESOURCE), leaving room for the rest.
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        let connections = min(requested, max(100, Int(limit.rlim_cur) - 1_000))
        if connections < requested {
            FileHandle.standardError.write(
                Data(
                    ("the open-file limit is \(limit.rlim_cur) (raising it needs CAP_SYS_RESOURCE): opening "
                        + "\(connections) of \(requested) connections\n").utf8
                )
            )
        }
        // A few real logins; their session tokens authenticate every idle connection (no password hashing).
        let names = users
        let clients = try await fleet.connectAll(names.enumerated().map { ($1, $0) })
        var tokens: [String] = []
        // Idle connections resume sessions of bench-c2…; bench-c0 and bench-c1 carry the light traffic (so that
        // its messages are not pushed to thousands of idle sessions of the same users).
        for name in names.dropFirst(2) {
            // The SDK keeps its own token private: a short extra login hands one over.
            let target = fleet.targets[tokens.count % fleet.targets.count]
            let probe = WarblerClient(host: target.host, port: target.port)
            try await probe.connect()
            tokens.append(try await probe.login(user: name, password: fleet.password).sessionToken)
            await probe.close()
        }
        let memoryBefore = serverPIDs.compactMap(ProcessSample.residentBytes).reduce(0, +)

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let opened = IdleConnections()
        let started = monotonicNanoseconds()
        var failures = 0
        let firstFailure = FirstFailure()
        var next = 0
        try await withThrowingTaskGroup(of: Bool.self) { tasks in
            func start() {
                guard next < connections else { return }
                let index = next
                next += 1
                let target = fleet.targets[index % fleet.targets.count]
                let source = "127.0.0.\(1 + index % max(1, min(sourceAddresses, 250)))"
                let token = tokens[index % tokens.count]
                tasks.addTask {
                    do {
                        let channel = try await IdleConnections.open(
                            from: source,
                            to: target,
                            token: token,
                            group: group
                        )
                        opened.add(channel)
                        return true
                    } catch {
                        firstFailure.note(error)
                        return false
                    }
                }
            }
            for _ in 0..<256 { start() }
            while let succeeded = try await tasks.next() {
                if !succeeded { failures += 1 }
                if progress && next % 5_000 == 0 && next < connections {
                    FileHandle.standardError.write(Data("\r\(next) connections opened   ".utf8))
                }
                start()
            }
        }
        let connectSeconds = Double(monotonicNanoseconds() - started) / 1e9
        if progress { FileHandle.standardError.write(Data("\n".utf8)) }
        if failures > 0 {
            let reason = firstFailure.description
            FileHandle.standardError.write(Data("\(failures) connections failed (first: \(reason))\n".utf8))
        }
        try await Task.sleep(nanoseconds: 2_000_000_000)
        let memoryAfter = serverPIDs.compactMap(ProcessSample.residentBytes).reduce(0, +)
        let established = connections - failures

        // Light traffic while every connection stays open: one pair at 50 msgs/s.
        let conversation = try await clients[0].createDirect(with: names[1]).conversationID
        let counters = await measure(
            senders: [Sender(client: clients[0], conversation: conversation)],
            clients: Array(zip(clients, names)),
            recipients: [conversation: 1],
            shape: .open(ratePerSecond: 50),
            payloadBytes: payloadBytes,
            window: (warmUp, seconds),
            onStart: onStart,
            progress: progress
        )
        counters.errors.add(failures, ordering: .relaxed)
        let stillOpen = opened.closeAll()
        try await group.shutdownGracefully()
        if stillOpen < established {
            FileHandle.standardError.write(Data("\(established - stillOpen) idle connections were closed\n".utf8))
        }
        let extras = ScenarioExtras(
            connections: established,
            connectsPerSecond: Double(established) / connectSeconds,
            serverBytesPerConnection: serverPIDs.isEmpty || established == 0
                ? nil : Double(Int64(memoryAfter) - Int64(memoryBefore)) / Double(established)
        )
        return (counters, extras)
    }
}

/// Raw client connections that say hello, resume a session, and then stay idle.
final class IdleConnections: Sendable {
    private let channels = Mutex<[any Channel]>([])

    func add(_ channel: any Channel) { channels.withLock { $0.append(channel) } }

    /// Closes every connection; returns how many were still open.
    func closeAll() -> Int {
        let all = channels.withLock { $0 }
        var open = 0
        for channel in all where channel.isActive {
            open += 1
            channel.close(promise: nil)
        }
        return open
    }

    static func open(
        from source: String,
        to target: Fleet.Target,
        token: String,
        group: any EventLoopGroup
    ) async throws -> any Channel {
        let promise = group.next().makePromise(of: Void.self)
        let connecting = ClientBootstrap(group: group)
            // The port is chosen at connect time for the whole 4-tuple (IP_BIND_ADDRESS_NO_PORT), and ports
            // still in TIME_WAIT from an earlier run may be reused.
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelOption(ChannelOptions.Types.SocketOption(level: Int(IPPROTO_IP), name: 24), value: 1)
            .bind(to: try SocketAddress(ipAddress: source, port: 0))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ByteToMessageHandler(FrameDecoder(maxFrameBytes: 1 << 20))
                    )
                    try channel.pipeline.syncOperations.addHandler(ResumeHandler(token: token, authenticated: promise))
                }
            }
            .connect(host: target.host, port: target.port)
        let channel: any Channel
        do {
            channel = try await connecting.get()
        } catch {
            promise.fail(error)
            throw error
        }
        do {
            try await promise.futureResult.get()
        } catch {
            try? await channel.close()
            throw error
        }
        return channel
    }
}

/// Sends Hello and ResumeSession, completes when LoggedIn arrives, then ignores everything.
final class ResumeHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer

    private let token: String
    private let authenticated: EventLoopPromise<Void>
    private var done = false

    init(token: String, authenticated: EventLoopPromise<Void>) {
        self.token = token
        self.authenticated = authenticated
    }

    func channelActive(context: ChannelHandlerContext) {
        var hello = Warbler_V1_ClientFrame()
        hello.requestID = 1
        hello.hello.protocolVersion = ProtocolLimits.currentVersion
        hello.hello.clientName = "warbler-bench"
        var resume = Warbler_V1_ClientFrame()
        resume.requestID = 2
        resume.resumeSession.sessionToken = token
        context.write(NIOAny(FrameCodec.lengthPrefixed(hello, allocator: context.channel.allocator)), promise: nil)
        context.writeAndFlush(
            NIOAny(FrameCodec.lengthPrefixed(resume, allocator: context.channel.allocator)),
            promise: nil
        )
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else { return }
        let frame = try? FrameCodec.decodeServerFrame(unwrapInboundIn(data))
        switch frame?.body {
        case .loggedIn?:
            done = true
            authenticated.succeed(())
        case .error(let error)?:
            done = true
            authenticated.fail(BenchFailure("resume refused: \(error.message)"))
        default:
            break
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !done {
            done = true
            authenticated.fail(BenchFailure("connection closed before it was authenticated"))
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// The first error of many tasks.
final class FirstFailure: Sendable, CustomStringConvertible {
    private let first = Mutex<String?>(nil)
    func note(_ error: any Error) { first.withLock { if $0 == nil { $0 = "\(error)" } } }
    var description: String { first.withLock { $0 } ?? "none" }
}
