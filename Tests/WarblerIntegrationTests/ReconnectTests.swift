import Foundation
import Testing
import WarblerClient
import WarblerWire

/// The SDK's automatic reconnect: after the node restarts, a client resumes, resends what was not
/// acknowledged, and catches up without gaps or duplicates.
@Suite(.serialized)
struct ReconnectTests {
    static let password = "correct horse battery staple"

    @Test func aClientReconnectsResendsAndCatchesUpAfterTheNodeRestarts() async throws {
        let node = try NodeProcess()
        for user in ["ada", "bob"] { try await node.addUser(user, password: Self.password) }
        try await node.start()
        let (bob, bobEvents) = try await node.login("bob", password: Self.password)
        let conversation = try await bob.createDirect(with: "ada")
        let (ada, _) = try await node.login("ada", password: Self.password, reconnect: false)
        for index in 1...5 { _ = try await ada.send(Data("live-\(index)".utf8), to: conversation.conversationID) }
        #expect(await bobEvents.waitForMessages(5))

        node.kill9()
        #expect(
            await bobEvents.wait { events in
                events.contains {
                    if case .disconnected = $0 { return true }
                    return false
                }
            }
        )
        // A send issued while the node is down waits for the reconnection and is then delivered once.
        let pendingSend = Task {
            try await bob.send(Data("from-bob".utf8), to: conversation.conversationID, clientMessageID: "b-1")
        }
        try await Task.sleep(nanoseconds: 200_000_000)
        try await node.start()
        let (ada2, _) = try await node.login("ada", password: Self.password, reconnect: false)
        for index in 6...10 {
            _ = try await ada2.send(Data("while-away-\(index)".utf8), to: conversation.conversationID)
        }

        let ack = try await pendingSend.value
        #expect(!ack.duplicate)
        #expect(
            await bobEvents.wait(seconds: 15) { events in
                events.contains {
                    if case .reconnected = $0 { return true }
                    return false
                }
            }
        )
        #expect(await bobEvents.waitForMessages(11, seconds: 15))
        let seqs = bobEvents.messages.filter { $0.conversation == conversation.conversationID }.map(\.seq)
        #expect(seqs == Array(1...11), "bob saw \(seqs)")
        let texts = Set(bobEvents.messages.map(\.text))
        #expect(texts.contains("from-bob") && texts.contains("while-away-10"))
        await ada.close()
        await ada2.close()
        await bob.close()
        node.stop()
    }

    /// A client given several nodes connects to one that answers — past a node that is down and one that turns
    /// it away — and, when its node dies, reconnects to another and logs in again there.
    @Test func aClientGivenSeveralNodesConnectsToOneThatAnswersAndFailsOverWhenItsNodeDies() async throws {
        // Three separate one-node clusters; which one the client is on shows in the users it can find.
        let first = try NodeProcess()
        let second = try NodeProcess()
        let full = try NodeProcess()
        for user in ["ada", "bob"] { try await first.addUser(user, password: Self.password) }
        for user in ["ada", "cy"] { try await second.addUser(user, password: Self.password) }
        try await full.addUser("ada", password: Self.password)
        full.serveArguments = ["--max-connections", "1"]
        for node in [first, second, full] { try await node.start() }
        // The one place of `full` is taken. The probe that saw the node listening may still hold it for a moment
        // (until the node notices it closed): a connection turned away is closed, and tried again.
        var occupant: RawConnection?
        let deadline = Date().addingTimeInterval(20)
        while occupant == nil {
            let raw = try RawConnection(port: full.port)
            raw.request(1, .hello(.with { $0.protocolVersion = 1 }))
            if case .welcome = await raw.nextFrame(within: 10)?.body {
                occupant = raw
            } else {
                guard Date() < deadline else { throw TestFailure("the full node never admitted its occupant") }
                try await Task.sleep(nanoseconds: 100_000_000)
            }
        }

        let down = try NodeProcess.freePort()
        func node(_ port: Int) -> WarblerClient.Configuration.Node { .init(host: "127.0.0.1", port: port) }
        let client = WarblerClient(
            configuration: .init(nodes: [node(down), node(full.port), node(first.port), node(second.port)])
        )
        let events = EventRecorder(client)
        try await client.connect()
        try await client.login(user: "ada", password: Self.password)
        _ = try await client.createDirect(with: "bob")

        first.kill9()
        #expect(
            await events.wait(seconds: 20) { events in
                events.contains {
                    if case .reconnected = $0 { return true }
                    return false
                }
            }
        )
        _ = try await client.createDirect(with: "cy")
        await client.close()
        withExtendedLifetime(occupant) {}
    }
}
