import Foundation
import NIOCore
import NIOWebSocket
import Testing
import WarblerClient
import WarblerWire

#if canImport(Glibc)
import Glibc
#endif

/// Connections are file descriptors: a node raises its open-file limit, admits the clients its share of that
/// limit allows, turns the rest away with a typed error, and never lets a flood take what its storage needs or
/// spin a core.
@Suite(.serialized)
struct ConnectionLimitTests {
    static let password = "correct horse battery staple"

    /// Sets the running node's soft open-file limit (`prlimit --pid`; its hard limit stays).
    static func setOpenFileLimit(of node: NodeProcess, soft: Int) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/prlimit")
        process.arguments = ["--pid", "\(node.processID ?? 0)", "--nofile=\(soft):"]
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw TestFailure("prlimit failed") }
    }

    /// The next frame on `raw` and its error, or nil (recorded as an issue) when it is not an error.
    static func errorFrame(from raw: RawConnection) -> (Warbler_V1_ServerFrame, Warbler_V1_Error)? {
        let frame = raw.readFrame()
        guard let frame, case .error(let error) = frame.body else {
            Issue.record("expected an error, got \(String(describing: frame))")
            return nil
        }
        return (frame, error)
    }

    /// Hello → Welcome on a new raw connection; the connection, or nil when the node answered otherwise.
    static func welcomed(port: Int) throws -> RawConnection? {
        let raw = try RawConnection(port: port)
        raw.request(1, .hello(.with { $0.protocolVersion = 1 }))
        guard case .welcome = raw.readFrame()?.body else { return nil }
        return raw
    }

    @Test func aFullNodeTurnsClientsAwayWithATypedErrorAndKeepsServing() async throws {
        let node = try NodeProcess()
        for user in ["ada", "bob"] { try await node.addUser(user, password: Self.password) }
        // Started with a soft limit of 512 and a hard one of 1,024: the node raises the soft limit and keeps a
        // quarter for storage and a quarter for itself, which leaves 512 client connections.
        node.launcher = ["/usr/bin/prlimit", "--nofile=512:1024", "--"]
        try await node.start()
        #expect(node.log.contains("files.limit=1024"))
        #expect(node.log.contains("files.limit_before=512"))
        #expect(node.log.contains("connections.max=512"))
        // RocksDB keeps at most its share of table files open (its options file records what it runs with).
        let database = node.dataDirectory + "/db"
        let optionsFile = try FileManager.default.contentsOfDirectory(atPath: database)
            .filter { $0.hasPrefix("OPTIONS-") }.sorted().last
        let options = try String(contentsOfFile: database + "/" + (optionsFile ?? "none"), encoding: .utf8)
        #expect(options.contains("max_open_files=256"))

        let (ada, _) = try await node.login("ada", password: Self.password)
        let (bob, bobEvents) = try await node.login("bob", password: Self.password)
        let conversation = try await ada.createDirect(with: "bob")

        // 510 more connections fill the node: more than its soft limit at start allowed.
        var held: [RawConnection] = []
        for index in 0..<510 {
            guard let raw = try Self.welcomed(port: node.port) else {
                Issue.record("connection \(index + 3) was not welcomed")
                return
            }
            held.append(raw)
        }

        // The next one, by either listener, hears why it cannot stay, and is closed.
        let refused = try RawConnection(port: node.port)
        refused.request(1, .hello(.with { $0.protocolVersion = 1 }))
        let (answer, error) = try #require(Self.errorFrame(from: refused))
        #expect(error.code == "node.connection_limit")
        #expect(error.fatal)
        #expect(answer.requestID == 1)
        #expect(refused.isClosedByPeer())

        let web = try await WebSocketTestClient.connect(port: node.webSocketPort)
        var hello = Warbler_V1_ClientFrame()
        hello.requestID = 7
        hello.hello = .with { $0.protocolVersion = 1 }
        web.sendBinary(hello)
        let webAnswer = await web.wait(seconds: 20) { $0.opcode == .binary }.flatMap {
            try? FrameCodec.decodeServerFrame($0.data)
        }
        if case .error(let error) = webAnswer?.body {
            #expect(error.code == "node.connection_limit")
        } else {
            Issue.record("expected node.connection_limit over WebSocket, got \(String(describing: webAnswer))")
        }
        await web.close()

        // The SDK reports the code.
        do {
            try await node.client(reconnect: false).connect()
            Issue.record("a client connected to a full node")
        } catch let error as ClientError {
            #expect(error.code == "node.connection_limit")
        }

        // A refused connection that says nothing is closed after a grace (10 s).
        let silent = try RawConnection(port: node.port)
        #expect(await Self.closedWithin(seconds: 20, silent))

        // Everyone admitted is still served: a message is stored, acknowledged and delivered.
        let ack = try await ada.send(Data("still here".utf8), to: conversation.conversationID)
        #expect(ack.seq == 1)
        #expect(await bobEvents.waitForMessages(1))

        // Closing connections gives their places back.
        held.removeLast(10)
        var readmitted: RawConnection?
        for _ in 0..<50 where readmitted == nil {
            readmitted = try Self.welcomed(port: node.port)
            if readmitted == nil { try await Task.sleep(nanoseconds: 100_000_000) }
        }
        #expect(readmitted != nil)
        #expect(node.log.contains("turning client connections away"))
        #expect(node.isRunning)
        await bob.close()
    }

    @Test func runningOutOfFileDescriptorsShedsWaitingConnectionsInsteadOfSpinning() async throws {
        let node = try NodeProcess()
        try await node.addUser("ada", password: Self.password)
        try await node.start()
        let (ada, _) = try await node.login("ada", password: Self.password)

        // Squeeze the running node to a few descriptors more than it holds: connections now wait in the
        // listen backlog, and accepting them fails with EMFILE.
        let open = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(node.processID ?? 0)/fd").count
        try Self.setOpenFileLimit(of: node, soft: open + 2)
        var waiting: [RawConnection] = []
        for _ in 0..<20 { waiting.append(try RawConnection(port: node.port)) }
        try await Task.sleep(nanoseconds: 500_000_000)
        let before = try #require(node.cpuSeconds())
        try await Task.sleep(nanoseconds: 3_000_000_000)
        let used = try #require(node.cpuSeconds()) - before
        // Retrying the accept at once would keep a core busy for the 3 s (~3 s of CPU, and one warning per try).
        #expect(used < 1.0, "the node used \(used) s of CPU in 3 s while out of descriptors")
        #expect(node.log.contains("out of file descriptors"))

        // The connections that waited were closed (there was no descriptor to serve them with).
        #expect(await Self.closedWithin(seconds: 10, waiting[waiting.count - 1]))
        // Descriptors back: new connections are served, and so is everyone who was connected.
        try Self.setOpenFileLimit(of: node, soft: 4_096)
        #expect(try Self.welcomed(port: node.port) != nil)
        _ = try await ada.listConversations()
        #expect(node.isRunning)
    }

    @Test func aConnectionThatDoesNotLogInInTimeIsClosed() async throws {
        let node = try NodeProcess()
        try await node.addUser("ada", password: Self.password)
        node.serveArguments = ["--login-timeout", "2"]
        try await node.start()
        let (ada, _) = try await node.login("ada", password: Self.password)

        let idle = try RawConnection(port: node.port)
        idle.handshake()
        // A WebSocket connection that never sends its upgrade request.
        let silentWeb = try RawConnection(port: node.webSocketPort)
        let loggedOut = try RawConnection(port: node.port)
        loggedOut.handshake()
        let started = Date()
        guard case .loggedIn = loggedOut.login("ada", Self.password)?.body else {
            Issue.record("login failed")
            return
        }
        try await Task.sleep(nanoseconds: 1_500_000_000)
        loggedOut.request(3, .logout(.init()))
        #expect(loggedOut.readFrame()?.requestID == 3)

        // The one that never logged in is told why, and closed, after 2 s.
        let (_, error) = try #require(Self.errorFrame(from: idle))
        #expect(error.code == "auth.login_timeout")
        #expect(error.fatal)
        #expect(idle.isClosedByPeer())
        // Logging out starts a new deadline (its first one, set 1.5 s before the logout, did not close it).
        #expect(loggedOut.nextErrorCode() == "auth.login_timeout")
        #expect(Date().timeIntervalSince(started) > 3.4)
        #expect(Self.closed(silentWeb))
        // A logged-in connection stays.
        _ = try await ada.listConversations()
    }

    /// True when the node has closed `raw` (without waiting).
    static func closed(_ raw: RawConnection) -> Bool {
        var byte: UInt8 = 0
        return recv(raw.socketDescriptor, &byte, 1, Int32(MSG_DONTWAIT)) == 0
    }

    /// True when the node closes `raw` within `seconds`.
    static func closedWithin(seconds: Double, _ raw: RawConnection) async -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if closed(raw) { return true }
            try? await Task.sleep(nanoseconds: 100_000_000)
        }
        return false
    }

    @Test func connectionsToThePeerPortCannotTakeTheNodesDescriptors() async throws {
        let node = try NodeProcess()
        try await node.addUser("ada", password: Self.password)
        // A limit of 1,024: the peer port holds 64 connections at most.
        node.launcher = ["/usr/bin/prlimit", "--nofile=1024:1024", "--"]
        try await node.start()
        let (ada, _) = try await node.login("ada", password: Self.password)

        // 150 connections that never start TLS: those beyond 64 are closed as soon as they are accepted.
        let flood = try (0..<150).map { _ in try RawConnection(port: node.peerPort) }
        let started = Date()
        var closedAtOnce = 0
        while closedAtOnce < 150 - 64 && Date().timeIntervalSince(started) < 8 {
            try await Task.sleep(nanoseconds: 100_000_000)
            closedAtOnce = flood.filter(Self.closed).count
        }
        #expect(closedAtOnce >= 150 - 64, "only \(closedAtOnce) of 150 closed")
        #expect(node.log.contains("refused a peer connection"))
        _ = try await ada.listConversations()

        // The rest never greet: they are closed once the greeting time (10 s) is up, giving their places back.
        var closedInTheEnd = 0
        for connection in flood
        where await Self.closedWithin(seconds: 25 - Date().timeIntervalSince(started), connection) {
            closedInTheEnd += 1
        }
        #expect(closedInTheEnd == 150)
        #expect(try FileManager.default.contentsOfDirectory(atPath: "/proc/\(node.processID ?? 0)/fd").count < 100)
        _ = try await ada.listConversations()
        #expect(node.isRunning)
    }

    @Test func aConnectionLimitTheOpenFileLimitCannotHoldIsRefusedAtStart() async throws {
        let node = try NodeProcess()
        node.launcher = ["/usr/bin/prlimit", "--nofile=1024:1024", "--"]
        node.serveArguments = ["--max-connections", "100000"]
        do {
            try await node.start()
            Issue.record("the node started with a connection limit it cannot hold")
        } catch {
            #expect(node.log.contains("max-connections 100000 needs an open-file limit of at least 100512"))
            #expect(!node.isRunning)
        }
        // Nor does a node start with too few descriptors to run at all.
        let starved = try NodeProcess()
        starved.launcher = ["/usr/bin/prlimit", "--nofile=256:256", "--"]
        await #expect(throws: (any Error).self) { try await starved.start() }
        #expect(starved.log.contains("the open-file limit is 256; a node needs at least 512"))
    }
}
