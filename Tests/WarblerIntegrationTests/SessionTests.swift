import Foundation
import Testing
import WarblerClient
import WarblerWire

/// Sessions are recorded in the metadata group: a node that restarts — even killed — resumes them without a
/// password check, any node of a cluster resumes a session another node opened, and a logout ends a session
/// everywhere.
@Suite(.serialized)
struct SessionTests {
    static let password = "correct horse battery staple"

    /// Logs `user` in on a new connection to `port` and returns the connection and its session token.
    static func login(_ user: String, port: Int) throws -> (RawConnection, String) {
        let raw = try RawConnection(port: port)
        raw.handshake()
        let reply = raw.login(user, password)
        guard case .loggedIn(let loggedIn) = reply?.body else {
            throw TestFailure("\(user) did not log in: \(String(describing: reply))")
        }
        return (raw, loggedIn.sessionToken)
    }

    /// Resumes `token` on a new connection to `port`: the connection, and the node's answer.
    static func resume(_ token: String, port: Int) async throws -> (RawConnection, Warbler_V1_ServerFrame?) {
        let raw = try RawConnection(port: port)
        raw.handshake()
        raw.request(7, .resumeSession(.with { $0.sessionToken = token }))
        return (raw, await answer(7, on: raw))
    }

    /// Resumes `token` on `port`, again every 100 ms until it is resumed or `seconds` pass (a replica that has
    /// not applied the login yet refuses it): the connection, and the last answer.
    static func resumeEventually(
        _ token: String,
        port: Int,
        seconds: Double = 20
    ) async throws -> (RawConnection, Warbler_V1_ServerFrame?) {
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            let (raw, answer) = try await resume(token, port: port)
            if case .loggedIn = answer?.body { return (raw, answer) }
            if Date() >= deadline { return (raw, answer) }
            try await Task.sleep(nanoseconds: 100_000_000)
        }
    }

    /// The answer to request `id` on `raw` (pushes skipped), or nil when none came.
    static func answer(_ id: UInt64, on raw: RawConnection) async -> Warbler_V1_ServerFrame? {
        while let frame = await raw.nextFrame(within: 20) {
            if frame.requestID == id { return frame }
        }
        return nil
    }

    /// The error code of `frame`, if it is an error.
    static func code(_ frame: Warbler_V1_ServerFrame?) -> String? {
        guard case .error(let error) = frame?.body else { return nil }
        return error.code
    }

    /// Lists conversations on `raw`: the answer (a conversation list when the session is live).
    static func list(on raw: RawConnection, id: UInt64) async -> Warbler_V1_ServerFrame? {
        raw.request(id, .listConversations(.init()))
        return await answer(id, on: raw)
    }

    @Test func aSessionOutlivesAKilledNodeAndSoDoesItsLogout() async throws {
        let node = try NodeProcess()
        try await node.addUser("ada", password: Self.password)
        try await node.start()
        let (_, token) = try Self.login("ada", port: node.port)

        // The login was answered once the metadata group had recorded the session: kill -9 loses nothing.
        node.kill9()
        try await node.start()
        let (resumed, answer) = try await Self.resume(token, port: node.port)
        guard case .loggedIn(let loggedIn) = answer?.body else {
            Issue.record("not resumed after a restart: \(String(describing: answer))")
            return
        }
        #expect(loggedIn.userID == "ada" && loggedIn.sessionToken == token)
        if case .conversationList = await Self.list(on: resumed, id: 8)?.body {
        } else {
            Issue.record("a resumed session cannot list its conversations")
        }
        #expect(!node.log.contains("login failed"), "no password was checked")

        resumed.request(9, .logout(.init()))
        if case .done = await Self.answer(9, on: resumed)?.body {} else { Issue.record("logout not done") }
        // Logged out, the connection may log in again; its old token is refused, after another kill -9 too.
        #expect(Self.code(await Self.list(on: resumed, id: 10)) == ErrorCode.authRequired.rawValue)
        node.kill9()
        try await node.start()
        let (_, refused) = try await Self.resume(token, port: node.port)
        #expect(Self.code(refused) == ErrorCode.sessionExpired.rawValue)
        // Garbage is refused the same way, without a lookup.
        let (_, garbage) = try await Self.resume("not a token", port: node.port)
        #expect(Self.code(garbage) == ErrorCode.sessionExpired.rawValue)
        node.stop()
    }

    @Test func theSDKResumesAfterItsNodeRestartsAndAnAppResumesFromAKeptToken() async throws {
        let node = try NodeProcess()
        for user in ["ada", "bob"] { try await node.addUser(user, password: Self.password) }
        try await node.start()
        defer { node.stop() }
        let (ada, adaEvents) = try await node.login("ada", password: Self.password)
        let token = try #require(ada.sessionToken)
        let conversation = try await ada.createDirect(with: "bob")

        // The node restarts: the client comes back on the same session (a password login would issue a new one).
        node.kill9()
        try await node.start()
        #expect(
            await adaEvents.wait(seconds: 30) { events in
                events.contains {
                    if case .reconnected = $0 { return true }
                    return false
                }
            }
        )
        #expect(ada.sessionToken == token)
        #expect(try await ada.send(Data("still here".utf8), to: conversation.conversationID).seq == 1)

        // Another client — the same app started again — resumes from the kept token alone.
        let again = node.client(reconnect: true)
        try await again.connect()
        let resumed = try await again.resume(sessionToken: token)
        #expect(resumed.userID == "ada")
        #expect(try await again.listConversations().map(\.conversationID) == [conversation.conversationID])

        // A logout from one ends the session for both: the first client's next request is refused, and so is
        // the token.
        try await ada.logout()
        #expect(ada.sessionToken == nil)
        await #expect(throws: ClientError.self) { try await again.listConversations() }
        await again.close()
        let late = node.client(reconnect: false)
        try await late.connect()
        await #expect(throws: ClientError.self) { try await late.resume(sessionToken: token) }
        await late.close()
        await ada.close()
    }

    @Test func aClientResumedFromATokenAloneClosesWhenItsSessionHasEnded() async throws {
        let node = try NodeProcess()
        try await node.addUser("ada", password: Self.password)
        try await node.start()
        defer { node.stop() }
        let (_, token) = try Self.login("ada", port: node.port)
        let client = node.client(reconnect: true)
        let events = EventRecorder(client)
        try await client.connect()
        try await client.resume(sessionToken: token)

        // Logged out elsewhere, then the connection drops: no password to log in again with, so the client
        // stops instead of retrying for ever.
        let (other, _) = try await Self.resume(token, port: node.port)
        other.request(9, .logout(.init()))
        if case .done = await Self.answer(9, on: other)?.body {} else { Issue.record("logout not done") }
        node.kill9()
        try await node.start()
        #expect(
            await events.wait(seconds: 30) { events in
                events.contains {
                    if case .disconnected(let reason) = $0 { return reason.contains("the session ended") }
                    return false
                }
            }
        )
    }
}

extension ClusterTests {
    @Test func aSessionResumesOnEveryNodeAfterAFullRestartAndALogoutEndsItEverywhere() async throws {
        let nodes = try await cluster(users: ["ada"])
        let (first, token) = try SessionTests.login("ada", port: nodes[0].port)

        // Another node resumes it once its replica of the metadata group has applied the login (at once, or
        // nearly: the login was answered when a quorum had it).
        let resumed = try await SessionTests.resumeEventually(token, port: nodes[1].port, seconds: 10).1
        guard case .loggedIn = resumed?.body else {
            Issue.record("node 2 did not resume node 1's session: \(String(describing: resumed))")
            return
        }
        _ = first

        // The whole cluster is killed and started again: every node resumes the session.
        for node in nodes { node.kill9() }
        for node in nodes { try await node.start() }
        try await waitForMembership(Set(nodes.map(\.nodeID)), asSeenBy: nodes[0])
        var connections: [RawConnection] = []
        for node in nodes {
            let (raw, answer) = try await SessionTests.resumeEventually(token, port: node.port)
            guard case .loggedIn = answer?.body else {
                Issue.record("node \(node.nodeID) did not resume after the restart: \(String(describing: answer))")
                return
            }
            connections.append(raw)
        }

        // A logout on node 3 ends it on every node: node 1's connection on that session is refused at its next
        // request, and no node resumes the token any more.
        connections[2].request(9, .logout(.init()))
        #expect(await SessionTests.answer(9, on: connections[2])?.body == .done(.init()))
        var refused = false
        let until = Date().addingTimeInterval(10)
        repeat {
            refused =
                SessionTests.code(await SessionTests.list(on: connections[0], id: 20))
                == ErrorCode.sessionExpired.rawValue
            if !refused { try await Task.sleep(nanoseconds: 100_000_000) }
        } while !refused && Date() < until
        #expect(refused, "node 1 still serves the session logged out on node 3")
        for node in nodes {
            let (_, answer) = try await SessionTests.resume(token, port: node.port)
            #expect(SessionTests.code(answer) == ErrorCode.sessionExpired.rawValue, "node \(node.nodeID)")
        }
        for node in nodes { node.stop() }
    }
}
