import Foundation
import Logging
import NIOPosix
import Synchronization
import Testing
import WarblerCluster
import WarblerWire

/// Answers every request with its own node id in a status; keeps every batch it receives.
final class EchoDelegate: PeerTransportDelegate {
    let nodeID: UInt64
    let received = Mutex<[UInt64]>([])
    let batches = Mutex<[RaftBatchRecord]>([])
    /// Peers whose connection closed.
    let lostPeers = Mutex<[UInt64]>([])
    init(nodeID: UInt64) { self.nodeID = nodeID }

    func peerTransport(received batch: RaftBatchRecord, from node: UInt64) {
        received.withLock { $0.append(node) }
        batches.withLock { $0.append(batch) }
    }

    func peerTransport(lost node: UInt64) { lostPeers.withLock { $0.append(node) } }

    func peerTransport(handle request: PeerRequest, from node: UInt64) async -> PeerResponse {
        var response = PeerResponse()
        response.status.nodeID = nodeID
        response.status.clusterID = "asked by \(node)"
        return response
    }

    /// The groups of the proposal batches received, in the order they were handed over, and whether each was
    /// handed over on an event loop.
    let proposed = Mutex<[(group: UInt32, onEventLoop: Bool)]>([])

    /// Answers each command with itself as its outcome: batches to an even group a little later and from
    /// another thread, so that answers go back in another order than their requests came.
    func peerTransport(
        propose batch: Warbler_Peer_V1_ProposeBatch,
        from node: UInt64,
        reply: @escaping @Sendable (PeerResponse) -> Void
    ) {
        proposed.withLock { $0.append((batch.group, MultiThreadedEventLoopGroup.currentEventLoop != nil)) }
        var response = PeerResponse()
        response.proposeResults.results = batch.commands.map { command in .with { $0.outcome = command } }
        if batch.group.isMultiple(of: 2) {
            let answer = response
            DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(5)) { reply(answer) }
        } else {
            reply(response)
        }
    }
}

/// Answers every request after `delay`, or as soon as it is released.
final class SlowDelegate: PeerTransportDelegate {
    let delay: Duration
    let released = Mutex(false)
    init(delay: Duration) { self.delay = delay }
    func peerTransport(received batch: RaftBatchRecord, from node: UInt64) {}
    func peerTransport(lost node: UInt64) {}
    func peerTransport(handle request: PeerRequest, from node: UInt64) async -> PeerResponse {
        let deadline = ContinuousClock.now + delay
        while ContinuousClock.now < deadline, !released.withLock({ $0 }) {
            try? await Task.sleep(for: .milliseconds(10))
        }
        var response = PeerResponse()
        response.status.nodeID = 2
        return response
    }

    func peerTransport(
        propose batch: Warbler_Peer_V1_ProposeBatch,
        from node: UInt64,
        reply: @escaping @Sendable (PeerResponse) -> Void
    ) {
        reply(PeerResponse())
    }
}

struct PeerTransportTests {
    let root = NSTemporaryDirectory() + "warbler-certs-\(UUID().uuidString)"

    func transport(
        _ node: UInt64,
        ca: String,
        loops: MultiThreadedEventLoopGroup,
        limits: PeerTransport.FrameLimits = .init()
    ) throws -> PeerTransport {
        let directory = root + "/node\(node)-\(UUID().uuidString.prefix(4))"
        try ClusterCertificates.issue(node: node, caDirectory: ca, outputDirectory: directory)
        #expect(try ClusterCertificates.nodeID(inDirectory: directory) == node)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return try PeerTransport(
            nodeID: node,
            certificateDirectory: directory,
            group: loops,
            logger: logger,
            limits: limits
        )
    }

    @Test func nodesOfOneCAAuthenticateEachOtherAndExchangeRequests() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        try ClusterCertificates.initCA(in: root + "/ca")
        #expect(throws: CertificateError.self) { try ClusterCertificates.initCA(in: root + "/ca") }
        let loops = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        // Node 2 listens; node 1 (the lower id) dials it: one connection for the pair, used both ways.
        let server = try transport(2, ca: root + "/ca", loops: loops)
        let serverDelegate = EchoDelegate(nodeID: 2)
        server.setDelegate(serverDelegate)
        let channel = try await server.bind(host: "127.0.0.1", port: 0)
        let address = "127.0.0.1:\(channel.localAddress!.port!)"
        let client = try transport(1, ca: root + "/ca", loops: loops)
        client.setDelegate(EchoDelegate(nodeID: 1))
        client.setAddress(address, for: 2)
        let response = try await client.request(.status(.init()), to: 2, timeout: .seconds(120))
        #expect(response.status.nodeID == 2)
        #expect(response.status.clusterID == "asked by 1")
        // Node 2 never dials node 1 (it does not even know its address): it answers and asks over node 1's
        // connection.
        let back = try await server.request(.status(.init()), to: 1, timeout: .seconds(120))
        #expect(back.status.nodeID == 1)
        #expect(back.status.clusterID == "asked by 2")
        #expect(server.addresses[1] == "")
        // Idle for longer than the silence timeout: the transport's own keep-alive frames keep the connection
        // open (a silent one is closed and dialled again, which fails requests in flight).
        try await Task.sleep(for: .seconds(4))
        #expect(serverDelegate.lostPeers.withLock { $0 }.isEmpty, "an idle connection was closed as silent")
        let later = try await server.request(.status(.init()), to: 1, timeout: .seconds(120))
        #expect(later.status.nodeID == 1)

        // A node whose certificate comes from another CA is refused during the handshake.
        try ClusterCertificates.initCA(in: root + "/other-ca")
        let stranger = try transport(3, ca: root + "/other-ca", loops: loops)
        await #expect(throws: PeerTransportError.self) {
            _ = try await stranger.request(.status(.init()), address: address, timeout: .seconds(120))
        }
        client.shutdown()
        stranger.shutdown()
        server.shutdown()
        try await channel.close()
        try await loops.shutdownGracefully()
    }

    /// Forwarded proposals are handed to the receiving node in the order they were sent, on the connection's
    /// event loop rather than in a task each (tasks could run in any order), and every answer reaches the
    /// request it answers, whatever order the answers come back in.
    @Test func proposalBatchesArriveInTheOrderSentAndEachAnswerFindsItsRequest() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        try ClusterCertificates.initCA(in: root + "/ca")
        let loops = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let server = try transport(2, ca: root + "/ca", loops: loops)
        let serverDelegate = EchoDelegate(nodeID: 2)
        server.setDelegate(serverDelegate)
        let channel = try await server.bind(host: "127.0.0.1", port: 0)
        let client = try transport(1, ca: root + "/ca", loops: loops)
        client.setDelegate(EchoDelegate(nodeID: 1))
        client.setAddress("127.0.0.1:\(channel.localAddress!.port!)", for: 2)
        _ = try await client.request(.status(.init()), to: 2, timeout: .seconds(120))

        let count = 300
        let answers = Mutex<[UInt32: [Data]]>([:])
        let failures = Mutex<[String]>([])
        let done = AsyncStream<Void>.makeStream()
        for group in 0..<UInt32(count) {
            var batch = Warbler_Peer_V1_ProposeBatch()
            batch.group = group
            batch.commands = [Data("command \(group)".utf8), Data("and \(group)".utf8)]
            client.request(.proposeBatch(batch), to: 2, timeout: .seconds(120)) { result in
                switch result {
                case .success(let response):
                    answers.withLock { $0[group] = response.proposeResults.results.map(\.outcome) }
                case .failure(let error):
                    failures.withLock { $0.append("\(group): \(error)") }
                }
                if answers.withLock({ $0.count }) + failures.withLock({ $0.count }) == count {
                    done.continuation.finish()
                }
            }
        }
        for await _ in done.stream {}
        #expect(failures.withLock { $0 }.isEmpty)
        let proposed = serverDelegate.proposed.withLock { $0 }
        #expect(proposed.map(\.group) == Array(0..<UInt32(count)))
        #expect(proposed.allSatisfy { $0.onEventLoop })
        for group in 0..<UInt32(count) {
            #expect(answers.withLock { $0[group] } == [Data("command \(group)".utf8), Data("and \(group)".utf8)])
        }
        client.shutdown()
        server.shutdown()
        try await channel.close()
        try await loops.shutdownGracefully()
    }

    /// A batch with a snapshot of `bytes` bytes (random, so that a piece out of place shows) for group 7.
    func snapshotBatch(bytes: Int) -> RaftBatchRecord {
        var generator = SystemRandomNumberGenerator()
        var data = Data(count: bytes)
        data.withUnsafeMutableBytes { bytes in
            for index in bytes.indices { bytes[index] = generator.next() }
        }
        var message = Warbler_Peer_V1_GroupMessage()
        message.group = 7
        message.message.snapshot.data = data
        message.message.snapshot.metadata.index = 42
        var batch = RaftBatchRecord()
        batch.messages = [message]
        batch.incarnation = 9
        return batch
    }

    /// A snapshot larger than the largest single frame (a large partition's) reaches the member whole, in pieces,
    /// on the connection everything else uses, which stays open and keeps working; sent in the background, it
    /// lets later frames pass it. The limits are the
    /// protocol's scaled down (1 MiB pieces, 256 MiB frames: here 16 KiB and 64 KiB).
    @Test func aSnapshotLargerThanTheLargestFrameArrivesWholeInPieces() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        try ClusterCertificates.initCA(in: root + "/ca")
        let loops = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        var limits = PeerTransport.FrameLimits()
        limits.maxFrameBytes = 64 << 10
        limits.pieceBytes = 16 << 10
        let server = try transport(2, ca: root + "/ca", loops: loops, limits: limits)
        let delegate = EchoDelegate(nodeID: 2)
        server.setDelegate(delegate)
        let channel = try await server.bind(host: "127.0.0.1", port: 0)
        let client = try transport(1, ca: root + "/ca", loops: loops, limits: limits)
        client.setDelegate(EchoDelegate(nodeID: 1))
        client.setAddress("127.0.0.1:\(channel.localAddress!.port!)", for: 2)
        _ = try await client.request(.status(.init()), to: 2, timeout: .seconds(120))

        // Four times the largest frame, and not a whole number of pieces; then a small one behind it.
        let large = snapshotBatch(bytes: 4 * limits.maxFrameBytes + limits.pieceBytes / 2 + 17)
        client.send(large, to: 2)
        let small = snapshotBatch(bytes: 100)
        client.send(small, to: 2)
        let sent = ContinuousClock.now
        while delegate.batches.withLock({ $0.count < 2 }) && ContinuousClock.now - sent < .seconds(60) {
            try await Task.sleep(for: .milliseconds(20))
        }
        let received = delegate.batches.withLock { $0 }
        #expect(received == [large, small])
        #expect(delegate.lostPeers.withLock { $0 }.isEmpty, "the connection closed")
        let after = try await client.request(.status(.init()), to: 2, timeout: .seconds(120))
        #expect(after.status.nodeID == 2)

        // A snapshot sent in the background lets what is sent after it pass it — a frame in pieces too — and
        // every frame arrives whole: frames go on being sent until the snapshot is in, and some arrive first.
        let snapshot = snapshotBatch(bytes: 512 * limits.pieceBytes)
        let passing = snapshotBatch(bytes: 3 * limits.pieceBytes)
        let before = delegate.batches.withLock { $0.count }
        client.sendInBackground(snapshot, to: 2)
        client.send(passing, to: 2)
        var sentAfter = 1
        let backgrounded = ContinuousClock.now
        while !delegate.batches.withLock({ $0.contains(snapshot) }) && ContinuousClock.now - backgrounded < .seconds(60)
        {
            client.send(small, to: 2)
            sentAfter += 1
            try await Task.sleep(for: .milliseconds(1))
        }
        while delegate.batches.withLock({ $0.count < before + 1 + sentAfter })
            && ContinuousClock.now - backgrounded < .seconds(60)
        {
            try await Task.sleep(for: .milliseconds(20))
        }
        let arrived = delegate.batches.withLock { Array($0.dropFirst(before)) }
        #expect(arrived.count == 1 + sentAfter)
        #expect(arrived.filter { $0 == snapshot }.count == 1 && arrived.filter { $0 == passing }.count == 1)
        #expect(arrived.allSatisfy { $0 == snapshot || $0 == passing || $0 == small })
        #expect(arrived.first == passing, "a frame sent after the background snapshot did not pass it")
        #expect(delegate.lostPeers.withLock { $0 }.isEmpty, "the connection closed")

        // A frame in pieces beyond what the receiver joins closes the connection, and nothing of it is handled;
        // the sender dials again and goes on.
        var strict = limits
        strict.maxJoinedFrameBytes = 2 * limits.maxFrameBytes
        let guarded = try transport(3, ca: root + "/ca", loops: loops, limits: strict)
        let guardedDelegate = EchoDelegate(nodeID: 2)
        guarded.setDelegate(guardedDelegate)
        let guardedChannel = try await guarded.bind(host: "127.0.0.1", port: 0)
        client.setAddress("127.0.0.1:\(guardedChannel.localAddress!.port!)", for: 3)
        _ = try await client.request(.status(.init()), to: 3, timeout: .seconds(120))
        client.send(snapshotBatch(bytes: 3 * limits.maxFrameBytes), to: 3)
        let refused = ContinuousClock.now
        while guardedDelegate.lostPeers.withLock({ $0.isEmpty }) && ContinuousClock.now - refused < .seconds(60) {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(guardedDelegate.lostPeers.withLock { $0 } == [1], "the connection stayed open")
        #expect(guardedDelegate.batches.withLock { $0 }.isEmpty)
        let again = try await client.request(.status(.init()), to: 3, timeout: .seconds(120))
        #expect(again.status.nodeID == 2)
        client.send(small, to: 3)
        let resent = ContinuousClock.now
        while guardedDelegate.batches.withLock({ $0.isEmpty }) && ContinuousClock.now - resent < .seconds(60) {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(guardedDelegate.batches.withLock { $0 } == [small])

        client.shutdown()
        server.shutdown()
        guarded.shutdown()
        try await channel.close()
        try await guardedChannel.close()
        try await loops.shutdownGracefully()
    }

    /// A request's timeout counts its fraction of a second: 30.5 s is enough for an answer after 150 ms (even on
    /// a loaded machine), and 300 ms gives up on an answer that would take 10 s (not at once, as a timeout cut to
    /// whole seconds did).
    @Test func requestTimeoutsKeepTheirFractionOfASecond() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        try ClusterCertificates.initCA(in: root + "/ca")
        let loops = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server = try transport(2, ca: root + "/ca", loops: loops)
        server.setDelegate(SlowDelegate(delay: .milliseconds(150)))
        let channel = try await server.bind(host: "127.0.0.1", port: 0)
        let client = try transport(1, ca: root + "/ca", loops: loops)
        client.setDelegate(EchoDelegate(nodeID: 1))
        client.setAddress("127.0.0.1:\(channel.localAddress!.port!)", for: 2)
        // The first request also opens the connection (TLS handshake) under a generous timeout.
        _ = try await client.request(.status(.init()), to: 2, timeout: .seconds(120))
        let answered = try await client.request(.status(.init()), to: 2, timeout: .milliseconds(30_500))
        #expect(answered.status.nodeID == 2)
        let stuck = SlowDelegate(delay: .seconds(10))
        server.setDelegate(stuck)
        let clock = ContinuousClock()
        let start = clock.now
        await #expect(throws: PeerTransportError.self) {
            _ = try await client.request(.status(.init()), to: 2, timeout: .milliseconds(300))
        }
        let waited = clock.now - start
        #expect(waited >= .milliseconds(250) && waited < .seconds(10), "gave up after \(waited)")
        // Let the late answer go out before the loops stop.
        stuck.released.withLock { $0 = true }
        try await Task.sleep(for: .milliseconds(200))
        client.shutdown()
        server.shutdown()
        try await channel.close()
        try await loops.shutdownGracefully()
    }
}
