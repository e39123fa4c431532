import Foundation
import NIOCore
import NIOPosix
import Synchronization
import WarblerWire

/// The async Swift SDK for Warbler.
///
/// ```swift
/// let client = WarblerClient(host: "127.0.0.1", port: 7400)
/// try await client.connect()
/// try await client.login(user: "ada", password: "…")
/// let ack = try await client.send(Data("hi".utf8), to: conversationID)
/// for await event in client.events { … }
/// ```
///
/// With `reconnect` on (the default), a dropped connection is re-established with backoff, the session is
/// resumed (or the login repeated), unacknowledged sends are resent with their original `client_message_id`
/// (the node never stores a message twice), and missed messages are synced and delivered as events, without
/// gaps or duplicates.
public final class WarblerClient: Sendable {
    /// Connection settings.
    public struct Configuration: Sendable {
        /// A node's client address.
        public struct Node: Sendable, Hashable {
            public var host: String
            public var port: Int
            public init(host: String, port: Int) {
                self.host = host
                self.port = port
            }
        }

        /// The node the client connects to first.
        public var host: String
        public var port: Int
        /// Other nodes of the same cluster. When a node cannot be reached, turns the client away
        /// (`node.connection_limit`) or drops the connection, ``WarblerClient/connect()`` and the reconnection
        /// try the next node, in turn: a client keeps working while the cluster does, whichever node failed.
        public var otherNodes: [Node] = []
        public var clientName = "warbler-swift"
        /// Reconnect and resume after a dropped connection.
        public var reconnect = true
        /// Largest frame accepted from the node.
        public var maxFrameBytes = 1 << 20
        /// The event loops the connection runs on, shared with other clients of the process (an application
        /// that keeps many connections, a load generator); the caller shuts them down. Nil: the client runs a
        /// thread of its own, released by ``WarblerClient/close()``.
        public var eventLoopGroup: (any EventLoopGroup)?

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }

        /// Connects to the first of `nodes` first, and to the others when it fails (``otherNodes``).
        public init(nodes: [Node]) {
            precondition(!nodes.isEmpty, "a client needs at least one node")
            self.init(host: nodes[0].host, port: nodes[0].port)
            otherNodes = Array(nodes.dropFirst())
        }

        /// Every node the client may connect to, the first one first.
        public var nodes: [Node] { [Node(host: host, port: port)] + otherNodes }
    }

    private struct PendingRequest {
        var frame: Warbler_V1_ClientFrame
        /// Resumed exactly once, by whoever removes the request from `pending` (a reply, a failed connection,
        /// `close()`), so the unchecked kind is safe — and it costs no allocation per request, as a checked one
        /// does.
        var continuation: UnsafeContinuation<Warbler_V1_ServerFrame, any Error>
        /// Safe to send again after a reconnect (idempotent on the node).
        var resend: Bool
    }

    private struct State {
        /// The open connection; requests written to it leave with one flush per burst.
        var connection: CoalescingWriter?
        var nextRequestID: UInt64 = 1
        var pending: [UInt64: PendingRequest] = [:]
        var credentials: (user: String, password: String)?
        var sessionToken: String?
        /// The last seq delivered per conversation: pushes at or below it are duplicates.
        var lastSeq: [String: UInt64] = [:]
        var closed = false
        var reconnecting = false
        /// Which of the configuration's nodes the client connects to now.
        var nodeIndex = 0
        var welcome: Warbler_V1_Welcome?
    }

    public let configuration: Configuration
    /// Pushes and connection changes, in arrival order; one task iterates at a time.
    public let events: ClientEvents
    private let eventSink = EventQueue()
    private let state = Mutex(State())
    /// The prefix of the message ids this client makes (64 random bits), and how many it made.
    private let messageIDPrefix = String(UInt64.random(in: .min ... .max), radix: 36) + "-"
    private let messageIDs = Atomic<UInt64>(0)
    /// The client's own thread, when it was given no event loops.
    private let ownGroup: MultiThreadedEventLoopGroup?

    /// Runs tasks on the event loop that reads this client's replies and pushes. A task that prefers it —
    /// `Task(executorPreference: client.executor) { … }`, `group.addTask(executorPreference:)`,
    /// `withTaskExecutorPreference(client.executor) { … }` — writes its requests and is resumed with their
    /// replies (and with ``events``) on that thread, without a thread switch per request: an application that
    /// sends at a high rate spends far less CPU. Such a task must not block: the connection waits meanwhile.
    /// Once a client that runs its own thread is closed, the executor runs what still comes to it on the
    /// global executor; with a shared ``Configuration/eventLoopGroup``, the application stops preferring it
    /// before it shuts the group down.
    public var executor: any TaskExecutor { loopExecutor }
    private let loopExecutor: EventLoopTaskExecutor

    /// The event loop the client's connections run on (one of ``Configuration/eventLoopGroup``'s, or the
    /// client's own thread), for the client's lifetime; ``executor`` runs tasks there.
    public let eventLoop: any EventLoop

    /// Creates a client; nothing happens until ``connect()``.
    public init(configuration: Configuration) {
        self.configuration = configuration
        events = ClientEvents(queue: eventSink)
        if let shared = configuration.eventLoopGroup {
            (eventLoop, ownGroup) = (shared.next(), nil)
        } else {
            let own = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            (eventLoop, ownGroup) = (own.next(), own)
        }
        loopExecutor = EventLoopTaskExecutor(eventLoop)
    }

    public convenience init(host: String, port: Int) { self.init(configuration: Configuration(host: host, port: port)) }

    deinit {
        // For clients that were never closed. The last reference may go away on one of the group's own
        // threads: shut down without waiting.
        ownGroup?.shutdownGracefully { _ in }
    }

    // MARK: - Connection

    /// Connects and completes the handshake: with the first node that answers, when the configuration names
    /// several (``Configuration/otherNodes``). Throws the last node's failure when none does.
    @discardableResult
    public func connect() async throws -> Warbler_V1_Welcome {
        var failure: any Error = ClientError.disconnected("no node answered")
        for _ in configuration.nodes {
            do {
                try await openChannel()
                let reply = try await request(hello)
                guard case .welcome(let welcome) = reply.body else { throw ClientError.unexpected("\(reply)") }
                state.withLock { $0.welcome = welcome }
                return welcome
            } catch {
                failure = error
                await dropConnectionAndMoveOn()
            }
        }
        throw failure
    }

    /// The first request on every connection.
    private var hello: Warbler_V1_ClientFrame.OneOf_Body {
        .hello(
            .with {
                $0.protocolVersion = ProtocolLimits.currentVersion
                $0.clientName = configuration.clientName
            }
        )
    }

    /// Closes the current connection (its closing is then not reported as a drop) and makes the next node the
    /// one to try.
    private func dropConnectionAndMoveOn() async {
        let channel = state.withLock { state -> (any Channel)? in
            defer {
                state.connection = nil
                state.nodeIndex = (state.nodeIndex + 1) % configuration.nodes.count
            }
            return state.connection?.channel
        }
        try? await channel?.close()
    }

    private func openChannel() async throws {
        let maxFrame = configuration.maxFrameBytes
        let bootstrap = ClientBootstrap(group: eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(5))
            .channelInitializer { [weak self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ClientFrameHandler(client: self, maxFrameBytes: maxFrame)
                    )
                }
            }
        let node = configuration.nodes[state.withLock { $0.nodeIndex }]
        let channel = try await bootstrap.connect(host: node.host, port: node.port).get()
        state.withLock { $0.connection = CoalescingWriter(channel: channel) }
    }

    /// Closes the connection for good; pending requests fail.
    public func close() async {
        let channel = state.withLock { state -> (any Channel)? in
            state.closed = true
            return state.connection?.channel
        }
        try? await channel?.close()
        failPending(ClientError.disconnected("closed by the client"), keepResendable: false)
        eventSink.finish()
        // Release the client's thread now rather than whenever the last reference goes.
        if let ownGroup {
            loopExecutor.stopUsingLoop()
            try? await ownGroup.shutdownGracefully()
        }
    }

    // MARK: - Session

    /// Logs in; the credentials are kept in memory to log in again if a session cannot be resumed.
    ///
    /// A node that is busy checking other passwords, or that refuses more failed logins from this address for a
    /// while, answers `node.rate_limited`: the login is tried again, after 0.25 s, then twice as long each time
    /// (at most 4 s), for up to 30 s before that error is thrown.
    @discardableResult
    public func login(user: String, password: String) async throws -> Warbler_V1_LoggedIn {
        let frame = Warbler_V1_ClientFrame.OneOf_Body.login(
            .with {
                $0.user = user
                $0.password = password
            }
        )
        var delay: UInt64 = 250_000_000
        let deadline = ContinuousClock.now + .seconds(30)
        var reply: Warbler_V1_ServerFrame
        while true {
            do {
                reply = try await request(frame)
                break
            } catch let error as ClientError where error.code == ErrorCode.rateLimited.rawValue {
                guard ContinuousClock.now + .nanoseconds(Int64(delay)) < deadline else { throw error }
                try await Task.sleep(nanoseconds: delay)
                delay = min(delay * 2, 4_000_000_000)
            }
        }
        guard case .loggedIn(let loggedIn) = reply.body else { throw ClientError.unexpected("\(reply)") }
        state.withLock {
            $0.credentials = (user, password)
            $0.sessionToken = loggedIn.sessionToken
        }
        return loggedIn
    }

    /// The current session's token, once logged in or resumed. Any node of the cluster resumes it, after
    /// restarts too, until it expires (12 hours after its login by default) or ``logout()`` ends it: an
    /// application may keep it — as a secret, it is as good as the password until then — to come back later
    /// with ``resume(sessionToken:)`` instead of asking for the password again.
    public var sessionToken: String? { state.withLock { $0.sessionToken } }

    /// Resumes a session from its token (``sessionToken`` of an earlier client) without a password. Throws
    /// `auth.session_expired` when it expired or was logged out. With no password known, a reconnection whose
    /// session has ended cannot log in again: the client then closes and ``events`` ends with
    /// ``ClientEvent/disconnected(reason:)``.
    @discardableResult
    public func resume(sessionToken: String) async throws -> Warbler_V1_LoggedIn {
        let reply = try await request(.resumeSession(.with { $0.sessionToken = sessionToken }))
        guard case .loggedIn(let loggedIn) = reply.body else { throw ClientError.unexpected("\(reply)") }
        state.withLock { $0.sessionToken = loggedIn.sessionToken }
        return loggedIn
    }

    /// Ends the session on every node of the cluster (its token is refused everywhere from then on) and forgets
    /// the credentials; the connection stays open for another login. Throws `node.unavailable`, still logged
    /// in, when the cluster cannot record the logout now.
    public func logout() async throws {
        let reply = try await request(.logout(.init()))
        guard case .done = reply.body else { throw ClientError.unexpected("\(reply)") }
        state.withLock {
            $0.credentials = nil
            $0.sessionToken = nil
        }
    }

    // MARK: - Conversations

    public func listConversations() async throws -> [Warbler_V1_Conversation] {
        let reply = try await request(.listConversations(.init()))
        guard case .conversationList(let list) = reply.body else { throw ClientError.unexpected("\(reply)") }
        for conversation in list.conversations { noteSeen(conversation.conversationID, upTo: 0) }
        return list.conversations
    }

    public func createDirect(with user: String) async throws -> Warbler_V1_Conversation {
        try conversation(try await request(.createDirect(.with { $0.user = user })))
    }

    public func createGroup(title: String, members: [String]) async throws -> Warbler_V1_Conversation {
        try conversation(
            try await request(
                .createGroup(
                    .with {
                        $0.title = title
                        $0.members = members
                    }
                )
            )
        )
    }

    public func addMembers(_ members: [String], to conversationID: String) async throws -> Warbler_V1_Conversation {
        try conversation(
            try await request(
                .addMembers(
                    .with {
                        $0.conversationID = conversationID
                        $0.members = members
                    }
                )
            )
        )
    }

    public func removeMember(_ member: String, from conversationID: String) async throws {
        try done(
            try await request(
                .removeMember(
                    .with {
                        $0.conversationID = conversationID
                        $0.member = member
                    }
                )
            )
        )
    }

    public func leave(_ conversationID: String) async throws {
        try done(try await request(.leaveConversation(.with { $0.conversationID = conversationID })))
    }

    // MARK: - Messages

    /// Sends a message and returns once it is committed. Resending the same `clientMessageID` (which the SDK
    /// does itself after a reconnect) never creates a second message. Without one, the client makes one that no
    /// other client makes: its own random prefix and a counter (an application that keeps unsent messages
    /// across restarts passes the id it stored with each).
    public func send(
        _ payload: Data,
        to conversationID: String,
        clientMessageID: String? = nil
    )
        async throws -> Warbler_V1_Ack
    {
        let clientMessageID = clientMessageID ?? newMessageID()
        let reply = try await request(
            .send(
                .with {
                    $0.conversationID = conversationID
                    $0.clientMessageID = clientMessageID
                    $0.payload = payload
                }
            ),
            resend: true
        )
        guard case .ack(let ack) = reply.body else { throw ClientError.unexpected("\(reply)") }
        return ack
    }

    /// Messages before `beforeSeq` (0 = the newest) or after `afterSeq`, ascending.
    ///
    /// By default the read is linearizable (it sees every message acknowledged before it was made). A non-zero
    /// `maxStaleness` lets the node answer from its own replica when it heard from the partition's leader within
    /// that time: faster for readers far from the leader, possibly missing the latest messages.
    public func history(
        of conversationID: String,
        before beforeSeq: UInt64 = 0,
        after afterSeq: UInt64 = 0,
        limit: Int = 50,
        maxStaleness: Duration = .zero
    )
        async throws -> Warbler_V1_HistoryPage
    {
        let reply = try await request(
            .getHistory(
                .with {
                    $0.conversationID = conversationID
                    $0.beforeSeq = beforeSeq
                    $0.afterSeq = afterSeq
                    $0.limit = UInt32(limit)
                    $0.maxStalenessMs =
                        UInt32(clamping: maxStaleness.components.seconds * 1000)
                        + UInt32(clamping: maxStaleness.components.attoseconds / 1_000_000_000_000_000)
                }
            )
        )
        guard case .historyPage(let page) = reply.body else { throw ClientError.unexpected("\(reply)") }
        return page
    }

    public func markRead(_ conversationID: String, upTo seq: UInt64) async throws {
        try done(
            try await request(
                .markRead(
                    .with {
                        $0.conversationID = conversationID
                        $0.seq = seq
                    }
                ),
                resend: true
            )
        )
    }

    public func setTyping(_ typing: Bool, in conversationID: String) async throws {
        try done(
            try await request(
                .setTyping(
                    .with {
                        $0.conversationID = conversationID
                        $0.typing = typing
                    }
                )
            )
        )
    }

    /// Fetches every message after the last one this client delivered, in each conversation, and delivers
    /// them as ``ClientEvent/message(_:)`` events. Returns how many were new.
    @discardableResult
    public func sync() async throws -> Int {
        var delivered = 0
        while true {
            let known = state.withLock { $0.lastSeq }
            let reply = try await request(
                .sync(
                    .with {
                        $0.lastSeq = known
                        $0.limit = 500
                    }
                )
            )
            guard case .syncPage(let page) = reply.body else { throw ClientError.unexpected("\(reply)") }
            for conversation in page.conversations { noteSeen(conversation.conversationID, upTo: 0) }
            for message in page.messages where deliver(message) == .fresh { delivered += 1 }
            if !page.more { return delivered }
        }
    }

    /// The last seq delivered per conversation.
    public var lastSeenSeq: [String: UInt64] { state.withLock { $0.lastSeq } }

    // MARK: - Plumbing

    private func conversation(_ reply: Warbler_V1_ServerFrame) throws -> Warbler_V1_Conversation {
        guard case .conversation(let conversation) = reply.body else { throw ClientError.unexpected("\(reply)") }
        noteSeen(conversation.conversationID, upTo: 0)
        return conversation
    }

    private func done(_ reply: Warbler_V1_ServerFrame) throws {
        guard case .done = reply.body else { throw ClientError.unexpected("\(reply)") }
    }

    private func noteSeen(_ conversationID: String, upTo seq: UInt64) {
        state.withLock { state in
            state.lastSeq[conversationID] = max(state.lastSeq[conversationID] ?? 0, seq)
        }
    }

    /// What to do with a message that arrived: deliver it, drop it (delivered before), or — for a push that
    /// skips a seq (`allowingGap` false) — fetch the missing ones first.
    private enum Arrival {
        case fresh
        case duplicate
        case gap
    }

    /// Delivers a message event unless it was delivered before (or, unless `allowingGap`, it skips a seq of a
    /// conversation this client has seen: then nothing is delivered and the caller syncs). One lookup of the
    /// conversation under one lock: every push of a receiving client comes through here.
    @discardableResult
    private func deliver(_ message: Warbler_V1_ChatMessage, allowingGap: Bool = true) -> Arrival {
        let arrival = state.withLock { state -> Arrival in
            Self.arrive(message.seq, after: &state.lastSeq[message.conversationID, default: 0], allowingGap)
        }
        if arrival == .fresh { eventSink.yield(.message(message)) }
        return arrival
    }

    private static func arrive(_ seq: UInt64, after last: inout UInt64, _ allowingGap: Bool) -> Arrival {
        if !allowingGap && last > 0 && seq > last + 1 { return .gap }
        guard seq > last else { return .duplicate }
        last = seq
        return .fresh
    }

    private func request(
        _ body: Warbler_V1_ClientFrame.OneOf_Body,
        resend: Bool = false
    ) async throws
        -> Warbler_V1_ServerFrame
    {
        let reply = try await withUnsafeThrowingContinuation { continuation in
            enum Route {
                case written
                case queued
                case failed
            }
            let route = state.withLock { state -> Route in
                let id = state.nextRequestID
                state.nextRequestID += 1
                var frame = Warbler_V1_ClientFrame()
                frame.requestID = id
                frame.body = body
                if state.closed { return .failed }
                if state.reconnecting {
                    // Idempotent requests wait for the reconnection, which resends them in order.
                    guard resend else { return .failed }
                    state.pending[id] = PendingRequest(frame: frame, continuation: continuation, resend: resend)
                    return .queued
                }
                guard let connection = state.connection else { return .failed }
                state.pending[id] = PendingRequest(frame: frame, continuation: continuation, resend: resend)
                write(frame, to: connection)
                return .written
            }
            if route == .failed { continuation.resume(throwing: ClientError.disconnected("not connected")) }
        }
        if case .error(let error) = reply.body { throw ClientError(error) }
        return reply
    }

    /// A message id no other client makes — what ``send(_:to:clientMessageID:)`` uses when given none; an
    /// application that must know the id before sending (to store it with an unsent message) takes one here.
    /// Without a random draw per message, short, and mostly in order (the node's dedup index prefers that).
    public func newMessageID() -> String {
        messageIDPrefix + String(messageIDs.add(1, ordering: .relaxed).newValue, radix: 36)
    }

    /// Writes a request (called under the state lock, so requests leave in the order they were numbered).
    private func write(_ frame: Warbler_V1_ClientFrame, to connection: CoalescingWriter) {
        connection.write(FrameCodec.lengthPrefixed(frame, allocator: connection.channel.allocator))
    }

    // Called by the handler on the event loop.
    func received(_ frame: Warbler_V1_ServerFrame) {
        if frame.requestID != 0 {
            let pending = state.withLock { $0.pending.removeValue(forKey: frame.requestID) }
            pending?.continuation.resume(returning: frame)
            return
        }
        switch frame.body {
        case .messagePush(let push):
            if deliver(push.message, allowingGap: false) == .gap {
                // A gap (a push was missed): fetch what is missing, in order, before this one.
                Task { [weak self] in try? await self?.sync() }
            }
        case .receiptPush(let push): eventSink.yield(.receipt(push))
        case .typingPush(let push): eventSink.yield(.typing(push))
        case .presencePush(let push): eventSink.yield(.presence(push))
        case .conversationPush(let push):
            noteSeen(push.conversation.conversationID, upTo: 0)
            eventSink.yield(.conversation(push))
        case .error(let error) where error.fatal:
            eventSink.yield(.disconnected(reason: "\(error.code): \(error.message)"))
        default:
            break
        }
    }

    /// `channel` closed: a drop when it is the client's current connection (an earlier one, closed by the client
    /// while it moved to another node, is not).
    func connectionClosed(_ channel: any Channel) {
        let (reconnect, wasOpen) = state.withLock { state -> (Bool, Bool) in
            let wasOpen = state.connection.map { $0.channel === channel } ?? false
            guard wasOpen else { return (false, false) }
            state.connection = nil
            let reconnect = configuration.reconnect && !state.closed && state.sessionToken != nil && !state.reconnecting
            if reconnect { state.reconnecting = true }
            return (reconnect, wasOpen)
        }
        guard wasOpen else { return }
        failPending(ClientError.disconnected("the connection closed"), keepResendable: reconnect)
        guard reconnect else {
            eventSink.yield(.disconnected(reason: "the connection closed"))
            return
        }
        eventSink.yield(.disconnected(reason: "the connection closed; reconnecting"))
        Task { await self.reconnectLoop() }
    }

    private func failPending(_ error: ClientError, keepResendable: Bool) {
        let failed = state.withLock { state -> [PendingRequest] in
            let failed = state.pending.values.filter { !(keepResendable && $0.resend) }
            state.pending = state.pending.filter { keepResendable && $0.value.resend }
            return Array(failed)
        }
        for request in failed { request.continuation.resume(throwing: error) }
    }

    private func reconnectLoop() async {
        var delay: UInt64 = 100_000_000
        while !state.withLock({ $0.closed }) {
            do {
                try await openChannel()
                let welcome = try await rawRequest(hello)
                guard case .welcome = welcome.body else { throw ClientError.unexpected("\(welcome)") }
                let token = state.withLock { $0.sessionToken } ?? ""
                var reply = try await rawRequest(.resumeSession(.with { $0.sessionToken = token }))
                if case .error = reply.body, let credentials = state.withLock({ $0.credentials }) {
                    reply = try await rawRequest(
                        .login(
                            .with {
                                $0.user = credentials.user
                                $0.password = credentials.password
                            }
                        )
                    )
                }
                if case .error(let error) = reply.body, error.code == ErrorCode.sessionExpired.rawValue,
                    state.withLock({ $0.credentials == nil })
                {
                    // Resumed from a token alone, and the session has ended: nothing can log in again.
                    await closeForGood("the session ended (\(error.message)); log in again")
                    return
                }
                guard case .loggedIn(let loggedIn) = reply.body else { throw ClientError.unexpected("\(reply)") }
                // Resend what was not acknowledged, in its original order, then catch up.
                let (connection, resend) = state.withLock { state -> (CoalescingWriter?, [Warbler_V1_ClientFrame]) in
                    state.sessionToken = loggedIn.sessionToken
                    state.reconnecting = false
                    return (state.connection, state.pending.values.map(\.frame).sorted { $0.requestID < $1.requestID })
                }
                if let connection { for frame in resend { write(frame, to: connection) } }
                _ = try await sync()
                eventSink.yield(.reconnected)
                return
            } catch {
                // The next attempt goes to the next node (with one node, the same one again).
                await dropConnectionAndMoveOn()
                try? await Task.sleep(nanoseconds: delay)
                delay = min(delay * 2, 5_000_000_000)
            }
        }
    }

    /// Closes the client after a reconnection that cannot log in; ``events`` says why, then ends.
    private func closeForGood(_ reason: String) async {
        eventSink.yield(.disconnected(reason: reason))
        await close()
    }

    /// A request during reconnection (bypasses the reconnecting gate).
    private func rawRequest(_ body: Warbler_V1_ClientFrame.OneOf_Body) async throws -> Warbler_V1_ServerFrame {
        try await withUnsafeThrowingContinuation { continuation in
            let written = state.withLock { state -> Bool in
                let id = state.nextRequestID
                state.nextRequestID += 1
                var frame = Warbler_V1_ClientFrame()
                frame.requestID = id
                frame.body = body
                guard let connection = state.connection else { return false }
                state.pending[id] = PendingRequest(frame: frame, continuation: continuation, resend: false)
                write(frame, to: connection)
                return true
            }
            if !written { continuation.resume(throwing: ClientError.disconnected("not connected")) }
        }
    }
}

/// Splits the connection's bytes into frames (``FrameSplitter``, in this handler rather than in a
/// `ByteToMessageHandler` of its own: one pipeline step less per read) and hands each decoded frame to the
/// client. A frame over the limit, a malformed one or a stream that ends inside a frame closes the connection,
/// and nothing after it is read.
final class ClientFrameHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    private weak var client: WarblerClient?
    private let frames: FrameSplitter

    init(client: WarblerClient?, maxFrameBytes: Int) {
        self.client = client
        frames = FrameSplitter(maxFrameBytes: maxFrameBytes)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        do {
            try frames.split(unwrapInboundIn(data)) { try self.received($0) }
        } catch {
            context.close(promise: nil)
        }
    }

    private func received(_ body: ByteBuffer) throws {
        let frame = try FrameCodec.decodeServerFrame(body)
        client?.received(frame)
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Frames that arrived whole before the end still count; a partial one is dropped with the connection.
        try? frames.finish { try self.received($0) }
        client?.connectionClosed(context.channel)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// A task executor over a NIO event loop: jobs run on the loop's thread, in order (queued from the loop itself,
/// without waking anything) — until the loop is about to shut down; then on the global executor (a job given to
/// a loop that shut down would be dropped, and its task would never resume).
final class EventLoopTaskExecutor: TaskExecutor {
    let loop: any EventLoop
    private let loopStopped = Atomic<Bool>(false)

    init(_ loop: any EventLoop) { self.loop = loop }

    /// Jobs from now on run on the global executor (called before the loop shuts down).
    func stopUsingLoop() { loopStopped.store(true, ordering: .sequentiallyConsistent) }

    func enqueue(_ job: consuming ExecutorJob) {
        guard !loopStopped.load(ordering: .sequentiallyConsistent) else {
            return globalConcurrentExecutor.enqueue(job)
        }
        let job = UnownedJob(job)
        loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
