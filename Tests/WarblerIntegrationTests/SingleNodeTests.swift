import Foundation
import NIOPosix
import Synchronization
import Testing
import WarblerClient
import WarblerWire

/// The real `warbler` binary on loopback, driven by several SDK clients.
@Suite(.serialized)
struct SingleNodeTests {
    static let password = "correct horse battery staple"

    func node(users: [String]) async throws -> NodeProcess {
        let node = try NodeProcess()
        for user in users { try await node.addUser(user, password: Self.password) }
        try await node.start()
        return node
    }

    /// A node without accounts says how to create the first administrator while it runs — also when its output
    /// is a file (a journal, `docker logs`), not a terminal; a node with accounts does not.
    @Test func aNodeWithoutAccountsSaysHowToCreateTheFirstAdministrator() async throws {
        let empty = try await node(users: [])
        #expect(empty.log.contains("no accounts yet"), "\(empty.log)")
        #expect(empty.log.contains("user add NAME --role admin --data \(empty.dataDirectory)"), "\(empty.log)")
        empty.stop()
        let used = try await node(users: ["ada"])
        used.stop()
        #expect(!used.log.contains("no accounts yet"), "\(used.log)")
    }

    @Test func aGroupConversationReachesOnlineMembersAndAnOfflineMemberSyncsLater() async throws {
        let node = try await node(users: ["ada", "bob", "cy", "dee"])
        let (ada, adaEvents) = try await node.login("ada", password: Self.password)
        let (bob, bobEvents) = try await node.login("bob", password: Self.password)
        let (cy, cyEvents) = try await node.login("cy", password: Self.password)
        let group = try await ada.createGroup(title: "launch", members: ["bob", "cy", "dee"])
        #expect(group.members.sorted() == ["ada", "bob", "cy", "dee"])
        // Three senders interleave; every member sees one order.
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            for (client, name) in [(ada, "ada"), (bob, "bob"), (cy, "cy")] {
                tasks.addTask {
                    for index in 1...10 {
                        _ = try await client.send(Data("\(name)-\(index)".utf8), to: group.conversationID)
                    }
                }
            }
            try await tasks.waitForAll()
        }
        for recorder in [adaEvents, bobEvents, cyEvents] { #expect(await recorder.waitForMessages(30)) }
        let orders = [adaEvents, bobEvents, cyEvents].map {
            $0.messages.filter { $0.conversation == group.conversationID }
        }
        #expect(orders[0].map(\.seq) == Array(1...30))
        #expect(orders[0].map(\.text) == orders[1].map(\.text))
        #expect(orders[0].map(\.text) == orders[2].map(\.text))
        // Each sender's own messages keep their order.
        for name in ["ada", "bob", "cy"] {
            #expect(orders[0].map(\.text).filter { $0.hasPrefix(name) } == (1...10).map { "\(name)-\($0)" })
        }
        // Dee was offline: she logs in, syncs, and gets everything in order.
        let (dee, deeEvents) = try await node.login("dee", password: Self.password)
        let list = try await dee.listConversations()
        #expect(list.first?.unreadCount == 30)
        #expect(try await dee.sync() == 30)
        #expect(await deeEvents.waitForMessages(30))
        #expect(deeEvents.messages.map(\.text) == orders[0].map(\.text))
        // Read markers become receipts for the others.
        try await dee.markRead(group.conversationID, upTo: 30)
        #expect(
            await adaEvents.wait { events in
                events.contains {
                    if case .receipt(let receipt) = $0 { return receipt.user == "dee" && receipt.readSeq == 30 }
                    return false
                }
            }
        )
        let history = try await dee.history(of: group.conversationID, before: 0, limit: 10)
        #expect(history.messages.map(\.seq) == Array(21...30))
        #expect(history.more)
        for client in [ada, bob, cy, dee] { await client.close() }
        node.stop()
    }

    @Test func resendingTheSameClientMessageIDStoresOneMessage() async throws {
        let node = try await node(users: ["ada", "bob"])
        let (ada, _) = try await node.login("ada", password: Self.password)
        let direct = try await ada.createDirect(with: "bob")
        let again = try await ada.createDirect(with: "bob")
        #expect(again.conversationID == direct.conversationID)
        let first = try await ada.send(Data("once".utf8), to: direct.conversationID, clientMessageID: "m-1")
        let second = try await ada.send(Data("once".utf8), to: direct.conversationID, clientMessageID: "m-1")
        #expect(first.seq == 1 && !first.duplicate)
        #expect(second.seq == 1 && second.duplicate)
        let history = try await ada.history(of: direct.conversationID)
        #expect(history.messages.count == 1)
        await ada.close()
        node.stop()
    }

    @Test func messageIDsTheSDKMakesNeverCollideAcrossClientsOfOneUser() async throws {
        // Two devices of one user send into one conversation without ids of their own: the ids the SDK makes
        // (a random prefix per client and a counter) never make the node take a message for a resend.
        let node = try await node(users: ["ada", "bob"])
        let (phone, _) = try await node.login("ada", password: Self.password)
        let (laptop, _) = try await node.login("ada", password: Self.password)
        let direct = try await phone.createDirect(with: "bob")
        var acks: [Warbler_V1_Ack] = []
        for index in 1...20 {
            acks.append(try await phone.send(Data("phone \(index)".utf8), to: direct.conversationID))
            acks.append(try await laptop.send(Data("laptop \(index)".utf8), to: direct.conversationID))
        }
        #expect(acks.allSatisfy { !$0.duplicate })
        #expect(acks.map(\.seq) == Array(1...40))
        await phone.close()
        await laptop.close()
        node.stop()
    }

    @Test func aTaskThatPrefersTheClientsExecutorRunsOnTheClientsEventLoop() async throws {
        let node = try await node(users: ["ada", "bob"])
        let loops = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let (ada, bob) = (node.client(eventLoopGroup: loops), node.client(eventLoopGroup: loops))
        try await ada.connect()
        try await ada.login(user: "ada", password: Self.password)
        try await bob.connect()
        try await bob.login(user: "bob", password: Self.password)
        let direct = try await ada.createDirect(with: "bob")
        // Bob's events and Ada's sends run on their connections' loops: every resumption lands there, and
        // everything arrives, in order.
        let received = Task(executorPreference: bob.executor) { () -> [UInt64] in
            var seqs: [UInt64] = []
            for await event in bob.events {
                guard bob.eventLoop.inEventLoop else { return [] }
                if case .message(let message) = event { seqs.append(message.seq) }
                if seqs.count == 40 { break }
            }
            return seqs
        }
        let sent = Task(executorPreference: ada.executor) { () throws -> [UInt64] in
            var seqs: [UInt64] = []
            for index in 1...40 {
                let ack = try await ada.send(Data("on the loop \(index)".utf8), to: direct.conversationID)
                guard ada.eventLoop.inEventLoop else { return [] }
                seqs.append(ack.seq)
            }
            return seqs
        }
        #expect(try await sent.value == Array(1...40), "a send resumed off the client's event loop")
        #expect(await received.value == Array(1...40), "an event resumed off the client's event loop")
        #expect(!ada.eventLoop.inEventLoop)
        await ada.close()
        await bob.close()
        try await loops.shutdownGracefully()
        node.stop()
    }

    @Test func aTaskOnAClientsOwnThreadGoesOnAfterItClosesTheClient() async throws {
        // The client runs its own thread, which close() shuts down: what the task awaits afterwards resumes on
        // the global executor instead of being handed to a loop that is gone (and never resuming).
        let node = try await node(users: ["ada", "bob"])
        let client = node.client()
        try await client.connect()
        try await client.login(user: "ada", password: Self.password)
        final class Steps: Sendable { let value = Mutex<[String]>([]) }
        let steps = Steps()
        Task(executorPreference: client.executor) {
            _ = try await client.createDirect(with: "bob")
            steps.value.withLock { $0.append("sent on \(client.eventLoop.inEventLoop ? "the loop" : "elsewhere")") }
            await client.close()
            try await Task.sleep(for: .milliseconds(20))
            steps.value.withLock { $0.append("went on") }
        }
        let deadline = ContinuousClock.now + .seconds(15)
        while steps.value.withLock({ $0.count }) < 2 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(steps.value.withLock { $0 } == ["sent on the loop", "went on"])
        node.stop()
    }

    @Test func everyAcknowledgedMessageSurvivesKill9() async throws {
        let node = try await node(users: ["ada", "bob"])
        let (ada, _) = try await node.login("ada", password: Self.password, reconnect: false)
        let direct = try await ada.createDirect(with: "bob")
        // A stream of sends from several tasks; kill -9 the node in the middle of it.
        let acknowledged = Acknowledged()
        let senders = Task {
            try? await withThrowingTaskGroup(of: Void.self) { tasks in
                for worker in 0..<8 {
                    tasks.addTask {
                        for index in 0..<10_000 {
                            let text = "w\(worker)-\(index)"
                            let ack = try await ada.send(Data(text.utf8), to: direct.conversationID)
                            acknowledged.record(ack.seq, text)
                        }
                    }
                }
                try await tasks.waitForAll()
            }
        }
        while acknowledged.count < 300 { try await Task.sleep(nanoseconds: 10_000_000) }
        node.kill9()
        await senders.value
        let acked = acknowledged.all
        #expect(acked.count >= 300)
        try await node.start()
        let (bob, _) = try await node.login("bob", password: Self.password)
        var stored: [UInt64: String] = [:]
        var after: UInt64 = 0
        while true {
            let page = try await bob.history(of: direct.conversationID, after: after, limit: 500)
            for message in page.messages { stored[message.seq] = String(decoding: message.payload, as: UTF8.self) }
            guard let last = page.messages.last else { break }
            after = last.seq
            if !page.more { break }
        }
        // Gap-free from 1, and every acknowledged message is there with its seq.
        #expect(stored.keys.sorted() == Array(1...UInt64(stored.count)))
        for (seq, text) in acked { #expect(stored[seq] == text, "acknowledged message \(seq) lost") }
        await ada.close()
        await bob.close()
        node.stop()
    }
}

/// Acknowledged messages, recorded from many tasks.
final class Acknowledged: Sendable {
    private let acked = Mutex<[UInt64: String]>([:])
    func record(_ seq: UInt64, _ text: String) { acked.withLock { $0[seq] = text } }
    var count: Int { acked.withLock { $0.count } }
    var all: [UInt64: String] { acked.withLock { $0 } }
}
