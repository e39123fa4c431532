import Logging
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization
import WarblerWire

import struct Foundation.Data

public typealias PeerFrame = Warbler_Peer_V1_Frame
public typealias PeerRequest = Warbler_Peer_V1_Request
public typealias PeerResponse = Warbler_Peer_V1_Response
public typealias RaftBatchRecord = Warbler_Peer_V1_RaftBatch

/// What the transport hands to the node runtime.
public protocol PeerTransportDelegate: AnyObject, Sendable {
    /// Raft messages from `node` (already authenticated). Must not block.
    func peerTransport(received batch: RaftBatchRecord, from node: UInt64)
    /// A request from `node` (0 when the peer has not joined yet); the answer goes back on the same connection.
    func peerTransport(handle request: PeerRequest, from node: UInt64) async -> PeerResponse
    /// Proposals `node` forwarded, called on the connection's event loop in the order they arrived (not in a
    /// task of their own, as other requests are), so that they are proposed in the order the peer sent them.
    /// Must not block; `reply` takes the answer, from any thread.
    func peerTransport(
        propose batch: Warbler_Peer_V1_ProposeBatch,
        from node: UInt64,
        reply: @escaping @Sendable (PeerResponse) -> Void
    )
    /// The connection `node` opened to this node closed (it stopped, crashed or was cut off).
    func peerTransport(lost node: UInt64)
}

/// A ``PeerTransportDelegate`` made of closures.
public final class PeerTransportHandlers: PeerTransportDelegate {
    private let received: @Sendable (RaftBatchRecord, UInt64) -> Void
    private let lost: @Sendable (UInt64) -> Void
    private let propose:
        @Sendable (Warbler_Peer_V1_ProposeBatch, UInt64, @escaping @Sendable (PeerResponse) -> Void) -> Void
    private let handle: @Sendable (PeerRequest, UInt64) async -> PeerResponse

    /// Handlers for each thing a transport hands over (see ``PeerTransportDelegate``).
    public init(
        received: @escaping @Sendable (RaftBatchRecord, UInt64) -> Void,
        lost: @escaping @Sendable (UInt64) -> Void,
        propose:
            @escaping @Sendable (
                Warbler_Peer_V1_ProposeBatch, UInt64, @escaping @Sendable (PeerResponse) -> Void
            ) -> Void,
        handle: @escaping @Sendable (PeerRequest, UInt64) async -> PeerResponse
    ) {
        self.received = received
        self.lost = lost
        self.propose = propose
        self.handle = handle
    }

    public func peerTransport(received batch: RaftBatchRecord, from node: UInt64) { received(batch, node) }

    public func peerTransport(handle request: PeerRequest, from node: UInt64) async -> PeerResponse {
        await handle(request, node)
    }

    public func peerTransport(
        propose batch: Warbler_Peer_V1_ProposeBatch,
        from node: UInt64,
        reply: @escaping @Sendable (PeerResponse) -> Void
    ) {
        propose(batch, node, reply)
    }

    public func peerTransport(lost node: UInt64) { lost(node) }
}

/// A peer request that did not get an answer.
public struct PeerTransportError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// The node-to-node transport: SwiftNIO over mutual TLS (cluster CA), length-prefixed ``PeerFrame``s, a
/// version handshake, and **one connection per pair of members**, opened by the member with the lower node id
/// (which reconnects with backoff) and used in both directions; bounded send queues while it is down (Raft
/// messages beyond the bound are dropped, which Raft tolerates; requests beyond it fail at once).
public final class PeerTransport: Sendable {
    /// The peer protocol version this build speaks.
    public static let version: UInt32 = 1
    /// How large frames may be, and from what size they travel in pieces. The defaults are the protocol's;
    /// tests shrink them to send frames "too large for one" in a moment.
    public struct FrameLimits: Sendable {
        /// The largest single frame accepted (this build sends none over ``pieceBytes``; nodes before it sent
        /// whole snapshots in one frame).
        public var maxFrameBytes = 256 << 20
        /// A frame whose encoding is larger travels as pieces of this many bytes (`Piece`), each a frame of its
        /// own: a snapshot of a large partition is bounded by ``maxJoinedFrameBytes`` instead of
        /// ``maxFrameBytes``, and the receiving side's silence watchdog sees it arrive piece by piece instead of
        /// nothing until its last byte.
        public var pieceBytes = 1 << 20
        /// The largest frame accepted when joined from pieces: protobuf's own bound on one message.
        public var maxJoinedFrameBytes = Int(Int32.max)

        /// The protocol's limits.
        public init() {}
    }

    /// This transport's frame limits.
    public let limits: FrameLimits
    /// Bytes queued for one peer while it is unreachable, beyond which frames are dropped.
    public static let maxQueuedBytes = 64 << 20
    /// A member connection on which nothing arrived for this long is closed (and dialled again): members send
    /// a liveness frame every tick, so silence means the path is broken, and a fresh connection recovers far
    /// sooner than TCP's retransmission schedule once the network heals.
    public static let memberSilenceTimeout: TimeAmount = .seconds(3)
    /// An inbound connection that has not completed its TLS handshake and hello by then is closed, so that
    /// connections that never speak cannot keep the peer port's places (``bind(host:port:maxConnections:)``).
    public static let greetingTimeout: TimeAmount = .seconds(10)

    let nodeID: UInt64
    private let clusterID: Mutex<String>
    private let serverTLS: NIOSSLContext
    private let clientTLS: NIOSSLContext
    let group: any EventLoopGroup
    let logger: Logger
    private let delegate: Mutex<(any PeerTransportDelegate)?> = Mutex(nil)
    private let peers = Mutex<[UInt64: PeerConnection]>([:])
    /// Requests sent and not answered yet, by id: what to call with the answer.
    private let pending = Mutex<[UInt64: @Sendable (Result<PeerResponse, any Error>) -> Void]>([:])
    private let nextRequestID = Atomic<UInt64>(1)

    /// Loads TLS material from `certificateDirectory` (see ``ClusterCertificates``).
    public init(
        nodeID: UInt64,
        certificateDirectory: String,
        group: any EventLoopGroup,
        logger: Logger,
        limits: FrameLimits = FrameLimits()
    ) throws {
        self.nodeID = nodeID
        self.limits = limits
        self.clusterID = Mutex("")
        self.group = group
        self.logger = logger
        serverTLS = try NIOSSLContext(
            configuration: ClusterCertificates.tlsConfiguration(directory: certificateDirectory, server: true)
        )
        clientTLS = try NIOSSLContext(
            configuration: ClusterCertificates.tlsConfiguration(directory: certificateDirectory, server: false)
        )
    }

    /// Sets who receives messages and requests.
    public func setDelegate(_ delegate: any PeerTransportDelegate) { self.delegate.withLock { $0 = delegate } }

    /// The cluster this node belongs to; peers of another cluster are refused. Empty until known.
    public func setClusterID(_ id: String) { clusterID.withLock { $0 = id } }

    var currentClusterID: String { clusterID.withLock { $0 } }
    var currentDelegate: (any PeerTransportDelegate)? { delegate.withLock { $0 } }

    /// Listens for peers on `host:port` (0 picks a free port), holding at most `maxConnections` inbound
    /// connections at once (TLS handshakes included); those beyond are closed as soon as they are accepted, so
    /// that connections to the peer port cannot take the file descriptors the node's storage needs.
    public func bind(host: String, port: Int, maxConnections: Int = 128) async throws -> any Channel {
        let transport = self
        let gate = ConnectionGate(
            capacity: maxConnections,
            logger: logger,
            warning: "refused a peer connection: the peer port holds its maximum of connections"
        )
        return try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .sheddingConnectionsWhenOutOfFiles(logger: logger, listener: "peers")
            .childChannelInitializer { channel in
                guard gate.admit(channel) == .admitted else {
                    return channel.eventLoop.makeFailedFuture(ConnectionGate.Full())
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: transport.serverTLS))
                    try transport.addFraming(to: channel, outbound: nil)
                }
            }
            .bind(host: host, port: port).get()
    }

    /// Tells the transport where `node` listens. This node dials members with a higher id (now, and again
    /// whenever the connection drops); members with a lower id dial it.
    public func setAddress(_ address: String, for node: UInt64) {
        guard node != nodeID, !address.isEmpty else { return }
        let passive = node < nodeID
        let (old, new) = peers.withLock { peers -> (PeerConnection?, PeerConnection?) in
            if let existing = peers[node], existing.passive || existing.address == address {
                existing.update(address: address)
                return (nil, nil)
            }
            let connection = PeerConnection(transport: self, node: node, address: address, passive: passive)
            let previous = peers[node]
            peers[node] = connection
            return (previous, connection)
        }
        old?.close()
        new?.start()
    }

    /// The addresses the transport knows.
    public var addresses: [UInt64: String] { peers.withLock { $0.mapValues(\.address) } }

    /// Sends Raft messages to `node`, queued while it is unreachable; dropped if it is unknown.
    public func send(_ batch: RaftBatchRecord, to node: UInt64) {
        guard let connection = peers.withLock({ $0[node] }) else { return }
        var frame = PeerFrame()
        frame.raft = batch
        connection.send(frame, droppable: true)
    }

    /// Sends `batch` (a snapshot) to `node` with other frames between its pieces, so that a large snapshot does
    /// not hold up the heartbeats of every group behind it; dropped unless the connection is up.
    public func sendInBackground(_ batch: RaftBatchRecord, to node: UInt64) {
        guard let connection = peers.withLock({ $0[node] }) else { return }
        var frame = PeerFrame()
        frame.raft = batch
        connection.sendInBackground(frame)
    }

    /// Sends `batch` only if the connection to `node` is up (liveness frames are worthless once stale).
    public func sendIfConnected(_ batch: RaftBatchRecord, to node: UInt64) {
        guard let connection = peers.withLock({ $0[node] }), connection.isConnected else { return }
        var frame = PeerFrame()
        frame.raft = batch
        connection.send(frame, droppable: true)
    }

    /// A member with a lower id connected: its connection becomes this node's way to it.
    func adopt(_ channel: any Channel, from node: UInt64) {
        let connection = peers.withLock { peers -> PeerConnection? in
            guard node < nodeID else { return nil }
            if let existing = peers[node] { return existing.passive ? existing : nil }
            // Its address is not in this node's metadata yet: it is known by its connection.
            let connection = PeerConnection(transport: self, node: node, address: "", passive: true)
            peers[node] = connection
            return connection
        }
        connection?.adopt(channel)
    }

    /// The connection a lower member opened closed.
    func release(_ channel: any Channel, from node: UInt64) {
        peers.withLock { $0[node] }?.release(channel)
    }

    func lost(_ node: UInt64) { currentDelegate?.peerTransport(lost: node) }

    /// Sends `body` to `node` and waits for the answer.
    public func request(
        _ body: PeerRequest.OneOf_Body,
        to node: UInt64,
        timeout: Duration = .seconds(5)
    )
        async throws -> PeerResponse
    {
        try await withCheckedThrowingContinuation { continuation in
            request(body, to: node, timeout: timeout) { continuation.resume(with: $0) }
        }
    }

    /// Sends `body` to whichever node listens at `address` (joining a cluster) and waits for the answer.
    public func request(
        _ body: PeerRequest.OneOf_Body,
        address: String,
        timeout: Duration = .seconds(10)
    )
        async throws -> PeerResponse
    {
        let connection = PeerConnection(transport: self, node: 0, address: address, passive: false)
        defer { connection.close() }
        return try await request(body, over: connection, timeout: timeout)
    }

    private func request(
        _ body: PeerRequest.OneOf_Body,
        over connection: PeerConnection,
        timeout: Duration
    )
        async throws -> PeerResponse
    {
        try await withCheckedThrowingContinuation { continuation in
            request(body, over: connection, timeout: timeout) { continuation.resume(with: $0) }
        }
    }

    /// Sends `body` to `node` and calls `completion` with the answer, or with a ``PeerTransportError`` when
    /// there is none in `timeout` (or the connection closes first, or too much is queued for the node) — once,
    /// from any thread. No task: for requests on a hot path (forwarded proposals).
    public func request(
        _ body: PeerRequest.OneOf_Body,
        to node: UInt64,
        timeout: Duration,
        completion: @escaping @Sendable (Result<PeerResponse, any Error>) -> Void
    ) {
        guard let connection = peers.withLock({ $0[node] }) else {
            return completion(.failure(PeerTransportError("no address known for node \(node)")))
        }
        request(body, over: connection, timeout: timeout, completion: completion)
    }

    private func request(
        _ body: PeerRequest.OneOf_Body,
        over connection: PeerConnection,
        timeout: Duration,
        completion: @escaping @Sendable (Result<PeerResponse, any Error>) -> Void
    ) {
        let id = nextRequestID.add(1, ordering: .relaxed).oldValue
        var frame = PeerFrame()
        frame.request.id = id
        frame.request.body = body
        let timer = group.next().scheduleTask(in: TimeAmount(timeout)) {
            self.complete(id, with: .failure(PeerTransportError("node \(connection.node) did not answer in time")))
        }
        pending.withLock { pending in
            pending[id] = { result in
                timer.cancel()
                completion(result)
            }
        }
        connection.track(id)
        if !connection.send(frame, droppable: false) {
            complete(id, with: .failure(PeerTransportError("too much queued for node \(connection.node)")))
        }
    }

    func complete(_ id: UInt64, with result: Result<PeerResponse, any Error>) {
        pending.withLock { $0.removeValue(forKey: id) }?(result)
    }

    /// Closes every connection and fails pending requests.
    public func shutdown() {
        let connections = peers.withLock { peers in
            defer { peers = [:] }
            return Array(peers.values)
        }
        for connection in connections { connection.close() }
        let waiting = pending.withLock { pending in
            defer { pending = [:] }
            return Array(pending.values)
        }
        for completion in waiting { completion(.failure(PeerTransportError("transport shut down"))) }
    }

    func addFraming(to channel: any Channel, outbound: PeerConnection?) throws {
        try channel.pipeline.syncOperations.addHandler(
            ByteToMessageHandler(FrameDecoder(maxFrameBytes: limits.maxFrameBytes))
        )
        try channel.pipeline.syncOperations.addHandler(PeerChannelHandler(transport: self, outbound: outbound))
    }

    func makeClientBootstrap(serverName: String) -> ClientBootstrap {
        let transport = self
        return ClientBootstrap(group: group)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(3))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        try NIOSSLClientHandler(context: transport.clientTLS, serverHostname: nil)
                    )
                }
            }
    }

    /// `frame`, length-prefixed; over ``FrameLimits/pieceBytes``, as consecutive `Piece` frames in the one buffer
    /// (written at once, so nothing comes between them on the connection).
    func encode(_ frame: PeerFrame, allocator: ByteBufferAllocator) -> ByteBuffer {
        // Serializing a generated message cannot fail.
        let bytes: [UInt8] = try! frame.serializedBytes()
        guard bytes.count > limits.pieceBytes else { return FrameCodec.lengthPrefixed(bytes, allocator: allocator) }
        // Each piece's frame is ~16 bytes over its data; the pieces go straight into the one buffer.
        let count = (bytes.count + limits.pieceBytes - 1) / limits.pieceBytes
        var joined = allocator.buffer(capacity: bytes.count + count * 32)
        for piece in pieces(of: bytes, background: false) { FrameCodec.writeLengthPrefixed(piece, into: &joined) }
        return joined
    }

    /// `frame` as length-prefixed frames: itself when its encoding is at most ``FrameLimits/pieceBytes``,
    /// otherwise its `Piece`s, marked `background` (they may travel with other frames between them).
    func encodeInBackground(_ frame: PeerFrame, allocator: ByteBufferAllocator) -> CircularBuffer<ByteBuffer> {
        let bytes: [UInt8] = try! frame.serializedBytes()
        guard bytes.count > limits.pieceBytes else { return [FrameCodec.lengthPrefixed(bytes, allocator: allocator)] }
        return CircularBuffer(
            pieces(of: bytes, background: true).map { FrameCodec.lengthPrefixed($0, allocator: allocator) }
        )
    }

    /// The encoded `Piece` frames that carry `bytes`, made one at a time as they are iterated.
    private func pieces(of bytes: [UInt8], background: Bool) -> some Sequence<[UInt8]> {
        let size = limits.pieceBytes
        return stride(from: 0, to: bytes.count, by: size).lazy.map { start in
            let end = min(start + size, bytes.count)
            var piece = PeerFrame()
            piece.piece.data = Data(bytes[start..<end])
            piece.piece.last = end == bytes.count
            piece.piece.background = background
            return try! piece.serializedBytes()
        }
    }
}

/// The connection to one peer. An active one (to a member with a higher id, or a one-off) dials, queues while
/// down and reconnects with backoff; a passive one (to a member with a lower id) waits for that member to
/// connect and adopts its connection.
final class PeerConnection: Sendable {
    private enum State {
        case idle
        case connecting
        case connected(any Channel)
        case closed
    }

    private struct Locked {
        var state: State = .idle {
            // Background pieces belong to the channel they started on: a new one starts with none.
            didSet {
                background.removeAll()
                pumping = false
            }
        }
        /// Pieces of a background frame (a snapshot) not written yet: one at a time, others' frames between them.
        var background = CircularBuffer<ByteBuffer>()
        /// True while ``PeerConnection/pump(_:)`` writes ``background``.
        var pumping = false
        var queue: [ByteBuffer] = []
        var queuedBytes = 0
        var backoffMilliseconds: Int64 = 0
        /// Requests sent over this connection and not answered yet: they fail when it closes.
        var requests: Set<UInt64> = []
        var address: String
    }

    let node: UInt64
    /// This side waits for the peer to connect (one connection per pair: the lower id dials).
    let passive: Bool
    private unowned let transport: PeerTransport
    private let locked: Mutex<Locked>

    init(transport: PeerTransport, node: UInt64, address: String, passive: Bool) {
        self.transport = transport
        self.node = node
        self.passive = passive
        self.locked = Mutex(Locked(address: address))
    }

    var address: String { locked.withLock { $0.address } }

    func update(address: String) { locked.withLock { $0.address = address } }

    /// Dials a member at once (and keeps the connection up); passive and one-off connections wait.
    func start() {
        guard !passive, node != 0 else { return }
        let dial = locked.withLock { locked -> Bool in
            guard case .idle = locked.state else { return false }
            locked.state = .connecting
            return true
        }
        if dial { connect(after: 0) }
    }

    /// The peer connected (passive side): its channel carries everything queued, then all traffic.
    func adopt(_ channel: any Channel) {
        let queued = locked.withLock { locked -> [ByteBuffer]? in
            if case .closed = locked.state { return nil }
            locked.state = .connected(channel)
            defer {
                locked.queue = []
                locked.queuedBytes = 0
            }
            return locked.queue
        }
        guard let queued else { return }
        for buffer in queued { channel.write(buffer, promise: nil) }
        channel.flush()
    }

    /// The peer's connection closed (passive side): wait for the next one.
    func release(_ channel: any Channel) {
        let released = locked.withLock { locked -> Bool in
            guard case .connected(let current) = locked.state, current === channel else { return false }
            locked.state = .idle
            return true
        }
        guard released else { return }
        failRequests("the connection from node \(node) closed")
        transport.lost(node)
    }

    /// Remembers a request sent over this connection (answered ones are forgotten when it closes).
    func track(_ id: UInt64) { locked.withLock { _ = $0.requests.insert(id) } }

    private func failRequests(_ reason: String) {
        let ids = locked.withLock { locked in
            defer { locked.requests = [] }
            return locked.requests
        }
        for id in ids { transport.complete(id, with: .failure(PeerTransportError(reason))) }
    }

    /// True while the connection is up.
    var isConnected: Bool {
        locked.withLock { locked in
            if case .connected = locked.state { return true }
            return false
        }
    }

    /// Writes `frame` — in pieces when it is large, as a snapshot is — with other frames between the pieces, so
    /// that it does not hold up every group's heartbeats while it is written. Only while connected; otherwise
    /// it is dropped (Raft sends a snapshot again). One background frame is written at a time.
    func sendInBackground(_ frame: PeerFrame) {
        let pieces = transport.encodeInBackground(frame, allocator: ByteBufferAllocator())
        let channel = locked.withLock { locked -> (any Channel)? in
            guard case .connected(let channel) = locked.state else { return nil }
            locked.background.append(contentsOf: pieces)
            if locked.pumping { return nil }
            locked.pumping = true
            return channel
        }
        if let channel { channel.eventLoop.execute { self.pump(channel) } }
    }

    /// Writes the next background piece once the one before it is written (on the channel's event loop, so
    /// frames sent meanwhile go between them); stops when there is none, or when `channel` is not the
    /// connection's any more.
    private func pump(_ channel: any Channel) {
        let next = locked.withLock { locked -> ByteBuffer? in
            guard case .connected(let current) = locked.state, current === channel else { return nil }
            guard let next = locked.background.popFirst() else {
                locked.pumping = false
                return nil
            }
            return next
        }
        guard let next else { return }
        // The next piece is a task of its own behind whatever was queued meanwhile (a write completes at once
        // while the socket takes it: calling `pump` from here would write every piece in a row, on one stack).
        channel.writeAndFlush(next).whenComplete { _ in channel.eventLoop.execute { self.pump(channel) } }
    }

    /// Queues or writes `frame`; false when the queue is full. On a connection that is up, the frame is encoded
    /// and written on the connection's event loop, not on the calling thread: the scheduler hands a round's
    /// appends over and goes on to its fsync while they are encoded.
    @discardableResult
    func send(_ frame: PeerFrame, droppable: Bool) -> Bool {
        if case .connected(let channel) = locked.withLock({ $0.state }) {
            let transport = self.transport
            channel.eventLoop.execute {
                channel.writeAndFlush(transport.encode(frame, allocator: channel.allocator), promise: nil)
            }
            return true
        }
        let buffer = transport.encode(frame, allocator: ByteBufferAllocator())
        enum Action {
            case write(any Channel)
            case connect
            case nothing
            case full
        }
        let action = locked.withLock { locked -> Action in
            switch locked.state {
            case .connected(let channel): return .write(channel)
            case .closed: return .full
            case .idle, .connecting:
                if locked.queuedBytes + buffer.readableBytes > PeerTransport.maxQueuedBytes { return .full }
                locked.queue.append(buffer)
                locked.queuedBytes += buffer.readableBytes
                if case .idle = locked.state, !passive {
                    locked.state = .connecting
                    return .connect
                }
                return .nothing
            }
        }
        switch action {
        case .write(let channel): channel.writeAndFlush(buffer, promise: nil)
        case .connect: connect(after: 0)
        case .nothing: break
        case .full:
            if !droppable { return false }
        }
        return true
    }

    private func connect(after delay: Int64) {
        let (host, port) = Self.split(address)
        precondition(!passive, "a passive peer connection never dials")
        let transport = self.transport
        let eventLoop = transport.group.next()
        eventLoop.scheduleTask(in: .milliseconds(delay)) {
            if case .closed = self.locked.withLock({ $0.state }) { return }
            let bootstrap = transport.makeClientBootstrap(serverName: host)
            bootstrap.connect(host: host, port: port).flatMap { channel in
                channel.eventLoop.makeCompletedFuture {
                    try transport.addFraming(to: channel, outbound: self)
                    return channel
                }
            }.whenComplete { result in
                switch result {
                case .success(let channel): self.connected(channel)
                case .failure(let error): self.failed(error)
                }
            }
        }
    }

    private func connected(_ channel: any Channel) {
        var hello = PeerFrame()
        hello.hello.version = PeerTransport.version
        hello.hello.nodeID = transport.nodeID
        hello.hello.clusterID = transport.currentClusterID
        hello.hello.oneOff = node == 0
        let helloBuffer = transport.encode(hello, allocator: channel.allocator)
        let queued = locked.withLock { locked -> [ByteBuffer]? in
            if case .closed = locked.state { return nil }
            locked.state = .connected(channel)
            locked.backoffMilliseconds = 0
            defer {
                locked.queue = []
                locked.queuedBytes = 0
            }
            return locked.queue
        }
        guard let queued else {
            channel.close(promise: nil)
            return
        }
        channel.write(helloBuffer, promise: nil)
        for buffer in queued { channel.write(buffer, promise: nil) }
        channel.flush()
        transport.logger.debug("connected to peer", metadata: ["peer.node": "\(node)", "peer.address": "\(address)"])
    }

    private func failed(_ error: any Error) {
        let delay = locked.withLock { locked -> Int64? in
            if case .closed = locked.state { return nil }
            locked.backoffMilliseconds = min(max(locked.backoffMilliseconds * 2, 100), 2_000)
            locked.state = .connecting
            return locked.backoffMilliseconds
        }
        guard let delay else { return }
        transport.logger.debug(
            "cannot reach peer; retrying",
            metadata: ["peer.node": "\(node)", "peer.address": "\(address)", "error": "\(error)"]
        )
        connect(after: delay)
    }

    /// The channel this side dialled closed: a member's is dialled again at once (with backoff), a one-off's
    /// only when something is queued.
    func channelClosed() {
        failRequests("the connection to node \(node) at \(address) closed")
        if node != 0 { transport.lost(node) }
        let reconnect = locked.withLock { locked -> Bool in
            if case .closed = locked.state { return false }
            let again = node != 0 || !locked.queue.isEmpty
            locked.state = again ? .connecting : .idle
            return again
        }
        if reconnect { connect(after: 100) }
    }

    func close() {
        failRequests("the connection to node \(node) was closed")
        let channel = locked.withLock { locked -> (any Channel)? in
            defer {
                locked.state = .closed
                locked.queue = []
            }
            if case .connected(let channel) = locked.state { return channel }
            return nil
        }
        channel?.close(promise: nil)
    }

    static func split(_ address: String) -> (String, Int) {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
            return (address, 7500)
        }
        return (String(address[..<colon]), port)
    }
}

/// Decodes peer frames on one connection (inbound or outbound) and dispatches them.
final class PeerChannelHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let transport: PeerTransport
    private let outbound: PeerConnection?
    /// The authenticated peer (inbound connections, after its hello).
    private var peer: UInt64 = 0
    /// An inbound member connection this node uses to reach that member.
    private var adopted = false
    private var greeted: Bool
    /// The pieces received so far of a large frame, and of a large background frame (see
    /// ``PeerTransport/FrameLimits/pieceBytes``): the two may come interleaved.
    private var pieces: ByteBuffer?
    private var backgroundPieces: ByteBuffer?

    init(transport: PeerTransport, outbound: PeerConnection?) {
        self.transport = transport
        self.outbound = outbound
        // On a connection this node opened, the peer is the one it dialled (its certificate was verified).
        self.peer = outbound?.node ?? 0
        self.greeted = outbound != nil
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if let outbound, outbound.node != 0 { watchForSilence(context) }
        if outbound == nil {
            let channel = context.channel
            context.eventLoop.assumeIsolated().scheduleTask(in: PeerTransport.greetingTimeout) {
                if !self.greeted { channel.close(promise: nil) }
            }
        }
    }

    /// Closes a member connection that went silent (see ``PeerTransport/memberSilenceTimeout``).
    private func watchForSilence(_ context: ChannelHandlerContext) {
        // Nothing written for a second: a no-op frame (a response to no request), so that the peer's watchdog
        // never closes a healthy connection, whoever uses the transport.
        let watchdog = IdleStateHandler(readTimeout: PeerTransport.memberSilenceTimeout, writeTimeout: .seconds(1))
        try? context.pipeline.syncOperations.addHandler(watchdog, position: .before(self))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let idle = event as? IdleStateHandler.IdleStateEvent, idle != .all else {
            return context.fireUserInboundEventTriggered(event)
        }
        if idle == .write {
            var keepAlive = PeerFrame()
            keepAlive.response = PeerResponse()
            context.writeAndFlush(
                wrapOutboundOut(transport.encode(keepAlive, allocator: context.channel.allocator)),
                promise: nil
            )
            return
        }
        transport.logger.notice(
            "peer connection silent; closing it to reconnect",
            metadata: ["peer.node": "\(peer)", "remote": "\(context.remoteAddress.map { "\($0)" } ?? "?")"]
        )
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let frame = decode(unwrapInboundIn(data), context) else { return }
        handle(frame, context)
    }

    /// The frame in `bytes`; nil (and the connection refused) when they hold none.
    private func decode(_ bytes: ByteBuffer, _ context: ChannelHandlerContext) -> PeerFrame? {
        do {
            return try PeerFrame(serializedBytes: ByteBufferBytes(bytes))
        } catch {
            refuse(context, "malformed peer frame of \(bytes.readableBytes) bytes: \(error)")
            return nil
        }
    }

    /// Gathers a piece of a large frame; handles the frame once its last piece is in.
    private func gather(_ piece: Warbler_Peer_V1_Piece, _ context: ChannelHandlerContext) {
        guard greeted, peer != 0 else {
            refuse(context, "a piece of a frame before the peer identified itself")
            return
        }
        let limit = transport.limits.maxJoinedFrameBytes
        // Taken out while written to, so that the buffer grows in place instead of being copied for each piece.
        let slot = piece.background ? \PeerChannelHandler.backgroundPieces : \PeerChannelHandler.pieces
        var joined = self[keyPath: slot] ?? context.channel.allocator.buffer(capacity: 2 * transport.limits.pieceBytes)
        self[keyPath: slot] = nil
        guard joined.readableBytes + piece.data.count <= limit else {
            refuse(context, "a frame in pieces of more than \(limit) bytes")
            return
        }
        joined.writeBytes(piece.data)
        guard piece.last else {
            self[keyPath: slot] = joined
            return
        }
        guard let frame = decode(joined, context) else { return }
        switch frame.body {
        case .piece, .hello: refuse(context, "a hello or a piece inside a frame in pieces")
        default: handle(frame, context)
        }
    }

    private func handle(_ frame: PeerFrame, _ context: ChannelHandlerContext) {
        guard greeted else {
            guard case .hello(let hello) = frame.body else {
                refuse(context, "the first frame must be a hello")
                return
            }
            greet(context, hello)
            return
        }
        switch frame.body {
        case .raft(let batch):
            guard peer != 0 else {
                refuse(context, "raft traffic before the peer identified itself")
                return
            }
            transport.currentDelegate?.peerTransport(received: batch, from: peer)
        case .request(let request):
            let channel = context.channel
            let from = peer
            let transport = self.transport
            let answer: @Sendable (PeerResponse) -> Void = { response in
                var frame = PeerFrame()
                frame.response = response
                frame.response.id = request.id
                channel.writeAndFlush(transport.encode(frame, allocator: channel.allocator), promise: nil)
            }
            if case .proposeBatch(let batch) = request.body {
                guard let delegate = transport.currentDelegate, from != 0 else {
                    var refusal = PeerResponse()
                    refusal.error.code = from == 0 ? "peer.not_member" : "node.starting"
                    refusal.error.message = "proposals are taken from members of a running node only"
                    return answer(refusal)
                }
                return delegate.peerTransport(propose: batch, from: from, reply: answer)
            }
            Task {
                if let delegate = transport.currentDelegate {
                    answer(await delegate.peerTransport(handle: request, from: from))
                } else {
                    var response = PeerResponse()
                    response.error.code = "node.starting"
                    response.error.message = "the node is starting"
                    answer(response)
                }
            }
        case .response(let response):
            transport.complete(response.id, with: .success(response))
        case .piece(let piece):
            gather(piece, context)
        case .hello:
            refuse(context, "a second hello")
        case nil:
            refuse(context, "an empty frame")
        }
    }

    private func greet(_ context: ChannelHandlerContext, _ hello: Warbler_Peer_V1_Hello) {
        guard hello.version == PeerTransport.version else {
            refuse(context, "peer speaks version \(hello.version), this node \(PeerTransport.version)")
            return
        }
        let certificate = try? context.pipeline.syncOperations.nioSSL_peerCertificate()
        guard let certificate, let certified = ClusterCertificates.nodeID(of: certificate),
            certified == hello.nodeID
        else {
            refuse(context, "peer claims node \(hello.nodeID) but its certificate does not name it")
            return
        }
        let ours = transport.currentClusterID
        if !ours.isEmpty, !hello.clusterID.isEmpty, ours != hello.clusterID {
            refuse(context, "peer node \(hello.nodeID) belongs to cluster \(hello.clusterID), this node to \(ours)")
            return
        }
        peer = hello.nodeID
        greeted = true
        if !hello.oneOff {
            adopted = true
            transport.adopt(context.channel, from: peer)
            watchForSilence(context)
        }
    }

    private func refuse(_ context: ChannelHandlerContext, _ reason: String) {
        transport.logger.warning(
            "closing peer connection",
            metadata: ["reason": "\(reason)", "remote": "\(context.remoteAddress.map { "\($0)" } ?? "?")"]
        )
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        outbound?.channelClosed()
        if adopted { transport.release(context.channel, from: peer) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        transport.logger.debug("peer connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }
}
