import Foundation
import Logging
import NIOCore
import WarblerChat
import WarblerCluster
import WarblerWire

/// One client connection: the handshake, authentication, and dispatch of requests to the node.
///
/// Runs on its channel's event loop, behind a transport adapter (length-prefixed TCP frames, or WebSocket
/// messages). Blocking work goes to the node's thread pool; proposals go to the group driver in arrival order
/// (so one client's pipelined sends keep their order); replies and pushes are written through a ``FrameSink``,
/// which is safe from any thread.
final class ClientChannelHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = InboundFrame

    private enum State {
        case awaitingHello
        case awaitingAuthentication
        case ready(Session, ConnectionHandle)
        case closed
    }

    private let node: ChatNode
    private let logger: Logger
    private let format: WireFormat
    /// Refused (the node holds its maximum of connections): the first frame is answered with the fatal
    /// `node.connection_limit`, and nothing else is done.
    private let refused: Bool
    private var state = State.awaitingHello
    private var sink: FrameSink?
    /// Closes the connection unless it logs in first; cancelled at login (which frees it: it would otherwise
    /// stay in the event loop's timers for as long as the login timeout).
    private var loginDeadline: Scheduled<Void>?
    /// Login and ResumeSession requests being checked. A deadline that passes while one is (the node is slow to
    /// check it — a password check waits its turn) waits for its answer: the connection is closed only if no
    /// login succeeded.
    private var loginsInProgress = 0
    private var loginDeadlinePassed = false

    init(node: ChatNode, format: WireFormat, admission: ConnectionGate.Admission = .admitted, logger: Logger) {
        self.node = node
        self.format = format
        self.refused = admission != .admitted
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        sink = FrameSink(channel: context.channel, format: format)
        if !refused { startLoginDeadline(context) }
    }

    /// Back to waiting for a login, with a new deadline.
    private func loggedOut(_ context: ChannelHandlerContext) {
        state = .awaitingAuthentication
        startLoginDeadline(context)
    }

    /// Closes the connection with the fatal `auth.login_timeout` unless it is logged in by the deadline
    /// (``NodeConfiguration/Security/loginTimeoutSeconds``).
    private func startLoginDeadline(_ context: ChannelHandlerContext) {
        loginDeadline?.cancel()
        let seconds = node.configuration.security.loginTimeoutSeconds
        let context = context
        loginDeadlinePassed = false
        loginDeadline = context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(Int64(seconds))) { [self] in
            loginDeadline = nil
            loginDeadlinePassed = true
            closeIfLoginTimedOut(context)
        }
    }

    /// Closes the connection with the fatal `auth.login_timeout` when its deadline has passed, it is not logged
    /// in, and no login of it is still being checked.
    private func closeIfLoginTimedOut(_ context: ChannelHandlerContext) {
        guard loginDeadlinePassed, loginsInProgress == 0 else { return }
        switch state {
        case .awaitingHello, .awaitingAuthentication:
            let seconds = node.configuration.security.loginTimeoutSeconds
            fail(context, WireError(.loginTimeout, "not logged in within \(seconds) s", fatal: true))
        case .ready, .closed:
            return
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if case .ready(_, let handle) = state { node.sessionEnded(handle) }
        state = .closed
        loginDeadline?.cancel()
        loginDeadline = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? WireError {
            // Framing errors (an oversize or truncated frame): the stream cannot be trusted any more.
            send(error.frame)
            if error.isFatal {
                // Writes are coalesced: flush before closing so the error frame goes out.
                context.channel.flush()
                context.close(promise: nil)
            }
            return
        }
        logger.debug("connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if refused {
            guard case .awaitingHello = state else { return }
            let frame: Warbler_V1_ClientFrame? =
                switch unwrapInboundIn(data) {
                case .binary(let body): try? FrameCodec.decodeClientFrame(body)
                case .json(let text): try? FrameCodec.decodeClientFrame(json: text)
                }
            let capacity = node.clientConnections.capacity
            var error = WireError(
                .connectionLimit,
                "this node holds its maximum of \(capacity) client connections; connect to another node or retry later",
                fatal: true
            )
            error.requestID = frame?.requestID ?? 0
            fail(context, error)
            return
        }
        let frame: Warbler_V1_ClientFrame
        do {
            switch unwrapInboundIn(data) {
            case .binary(let body):
                if format != .lengthPrefixed { sink?.noteClientUsed(.webSocketBinary) }
                frame = try FrameCodec.decodeClientFrame(body)
            case .json(let text):
                sink?.noteClientUsed(.webSocketText)
                frame = try FrameCodec.decodeClientFrame(json: text)
            }
        } catch {
            // A malformed frame keeps the stream in step (its length was valid): answer and go on, unless the
            // peer has not even said Hello.
            if case .awaitingHello = state {
                fail(context, WireError(.helloRequired, "the first frame must be a valid Hello", fatal: true))
            } else {
                send(error.frame)
            }
            return
        }
        guard let request = frame.body else { return }
        let id = frame.requestID
        switch state {
        case .closed:
            return
        case .awaitingHello:
            guard case .hello(let hello) = request else {
                fail(context, WireError(.helloRequired, "the first frame must be Hello", fatal: true))
                return
            }
            guard hello.protocolVersion == ProtocolLimits.currentVersion else {
                let text =
                    "version \(hello.protocolVersion) is not supported; this node speaks \(ProtocolLimits.currentVersion)"
                var error = WireError(.unsupportedVersion, text, fatal: true)
                error.requestID = id
                fail(context, error)
                return
            }
            state = .awaitingAuthentication
            reply(id) {
                $0.welcome = .with {
                    $0.protocolVersion = ProtocolLimits.currentVersion
                    $0.nodeID = "\(node.configuration.nodeID)"
                    $0.maxFrameBytes = UInt32(node.configuration.limits.maxFrameBytes)
                    $0.maxPayloadBytes = UInt32(node.configuration.limits.maxPayloadBytes)
                }
            }
        case .awaitingAuthentication:
            switch request {
            case .login(let login):
                authenticate(context, id, node.login(login, from: context.channel.remoteAddress, on: context.eventLoop))
            case .resumeSession(let resume):
                authenticate(context, id, node.resume(resume.sessionToken, on: context.eventLoop))
            case .ping(let ping): pong(id, ping)
            case .hello: send(WireError(.invalidArgument, "Hello was already received").frame(requestID: id))
            default: send(WireError(.authRequired, "log in first").frame(requestID: id))
            }
        case .ready(let session, let handle):
            switch request {
            case .ping(let ping): pong(id, ping)
            case .logout:
                // Answered once the session has ended everywhere; until then the connection stays logged in (a
                // logout the cluster could not record is answered `node.unavailable` and may be retried).
                node.endSession(session, on: context.eventLoop).hop(to: context.eventLoop).assumeIsolated()
                    .whenSuccess { [self] ended in
                        if case .failure(let error) = ended { return send(error.frame(requestID: id)) }
                        if case .ready(let current, let handle) = state, current.token == session.token {
                            node.sessionEnded(handle)
                            loggedOut(context)
                        }
                        reply(id) { $0.done = .init() }
                    }
            case .hello, .login, .resumeSession:
                send(WireError(.invalidArgument, "already logged in as \(session.userID)").frame(requestID: id))
            default:
                guard node.sessions.resolve(session.token) != nil else {
                    send(WireError(.sessionExpired, "the session expired; log in again").frame(requestID: id))
                    node.sessionEnded(handle)
                    loggedOut(context)
                    return
                }
                node.handle(request, from: session.userID, connection: handle, on: context.eventLoop) {
                    [weak self] result in
                    self?.send(result, requestID: id)
                }
            }
        }
    }

    private func authenticate(
        _ context: ChannelHandlerContext,
        _ id: UInt64,
        _ future: EventLoopFuture<Result<(Session, String), WireError>>
    ) {
        loginsInProgress += 1
        // The node completes logins on the connection's own event loop.
        future.hop(to: context.eventLoop).assumeIsolated().whenComplete { [self] outcome in
            loginsInProgress -= 1
            // Answered below first; a connection whose deadline passed meanwhile is closed after the answer.
            defer { closeIfLoginTimedOut(context) }
            switch outcome {
            case .success(.success(let (session, name))):
                guard case .awaitingAuthentication = state, let sink else {
                    // Another login on this connection, sent at the same time, got in first (or it closed): the
                    // session this one opened is never used.
                    _ = node.endSession(session, on: context.eventLoop)
                    if case .ready(let current, _) = state {
                        send(
                            WireError(.invalidArgument, "already logged in as \(current.userID)").frame(requestID: id)
                        )
                    }
                    return
                }
                let handle = ConnectionHandle(sink: sink, userID: session.userID)
                state = .ready(session, handle)
                loginDeadline?.cancel()
                loginDeadline = nil
                node.sessionStarted(handle)
                reply(id) {
                    $0.loggedIn = .with {
                        $0.userID = session.userID
                        $0.userName = name
                        $0.sessionToken = session.token
                        $0.expiresAtUnixMs = Int64(session.expiresAt.timeIntervalSince1970 * 1000)
                    }
                }
            case .success(.failure(let error)):
                send(error.frame(requestID: id))
            case .failure(let error):
                send(WireError(.internalError, "authentication failed: \(error)").frame(requestID: id))
            }
        }
    }

    private func pong(_ id: UInt64, _ ping: Warbler_V1_Ping) {
        reply(id) {
            $0.pong = .with {
                $0.nonce = ping.nonce
                $0.serverTimeUnixMs = Int64(Date().timeIntervalSince1970 * 1000)
            }
        }
    }

    private func reply(_ id: UInt64, _ build: (inout Warbler_V1_ServerFrame) -> Void) {
        var frame = Warbler_V1_ServerFrame()
        frame.requestID = id
        build(&frame)
        send(frame)
    }

    private func send(_ result: Result<Warbler_V1_ServerFrame, WireError>, requestID: UInt64) {
        switch result {
        case .success(var frame):
            frame.requestID = requestID
            send(frame)
        case .failure(let error):
            send(error.frame(requestID: requestID))
        }
    }

    private func send(_ frame: Warbler_V1_ServerFrame) { sink?.send(frame) }

    private func fail(_ context: ChannelHandlerContext, _ error: WireError) {
        send(error.frame)
        state = .closed
        // Writes are coalesced: flush before closing so the error frame goes out.
        context.channel.flush()
        context.close(promise: nil)
    }
}
