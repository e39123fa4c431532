import Foundation
import Logging
import SwiftProtobuf
import Testing
import WarblerChat
import WarblerCluster
import WarblerRaft
import WarblerStorage
import WarblerWire

/// A one-node cluster (metadata group + one partition) on RocksDB, driven by the real multi-Raft runtime.
final class GroupFixture: @unchecked Sendable {
    let path = NSTemporaryDirectory() + "warbler-group-\(UUID().uuidString)"
    var database: Database!
    var host: RaftHost<ChatGroup>!
    var queries: ChatQueries!

    init() throws { try start() }

    deinit {
        host?.stop()
        try? FileManager.default.removeItem(atPath: path)
    }

    func start() throws {
        var options = Database.Options()
        options.columnFamilies = ["raft", "chat", "cluster"]
        database = try Database(path: path, options: options)
        let raft = try database.columnFamily("raft")
        let chat = try database.columnFamily("chat")
        let cluster = try database.columnFamily("cluster")
        if try RaftHost<ChatGroup>.identity(database: database, clusterFamily: cluster) == nil {
            var node = NodeInfo()
            node.nodeID = 1
            _ = try RaftHost<ChatGroup>.initializeCluster(
                database: database,
                raftFamily: raft,
                clusterFamily: cluster,
                node: node,
                partitionCount: 1,
                replicationFactor: 1
            )
        }
        let database = self.database!
        host = try RaftHost(
            nodeID: 1,
            database: database,
            raftFamily: raft,
            clusterFamily: cluster,
            transport: nil,
            logger: Logger(label: "test"),
            makeMachine: { ChatGroup(machine: ChatStateMachine(group: $0), database: database, family: chat) },
            onApplied: { _, _ in }
        )
        host.start()
        queries = ChatQueries(database: database, family: chat, partitionCount: { 1 })
    }

    func restart() throws {
        host.stop()
        host = nil
        queries = nil
        database = nil
        try start()
    }

    func run(_ body: ChatCommand.OneOf_Body) async throws -> ApplyOutcome {
        var command = ChatCommand()
        command.timeUnixMs = Int64(Date().timeIntervalSince1970 * 1000)
        command.body = body
        let group: UInt32
        if case .createAccount = body { group = 0 } else { group = 1 }
        return try await host.propose(try command.serializedBytes() as [UInt8], to: group)
    }
}

struct ChatGroupTests {
    func account(_ name: String) -> ChatCommand.OneOf_Body {
        .createAccount(
            .with {
                $0.userID = "u-\(name)"
                $0.name = name
            }
        )
    }

    /// What a leader sends back to the node that forwarded a proposal: everything that node answers its client
    /// with, and for a posted message not the payload (that node delivers the message from its own replica).
    @Test func aForwardedOutcomeCarriesWhatTheAckNeedsButNotThePayload() throws {
        let message = MessageRecord.with {
            $0.conversationID = "c-1"
            $0.seq = 42
            $0.sender = "u-ada"
            $0.clientMessageID = "m-7"
            $0.payload = Data(repeating: 0x61, count: 4096)
            $0.timeUnixMs = 1_700_000_000_000
        }
        let encoded = ChatGroup.encode(.posted(message, duplicate: true))
        #expect(encoded.count < 100, "\(encoded.count) bytes")
        var expected = message
        expected.payload = Data()
        #expect(try ChatGroup.decodeOutcome(encoded) == .posted(expected, duplicate: true))
        let read = ApplyOutcome.readMarked(conversationID: "c-1", user: "u-bob", seq: 41)
        #expect(try ChatGroup.decodeOutcome(ChatGroup.encode(read)) == read)
    }

    @Test func concurrentSendsAreAcknowledgedGapFreeWithGroupCommit() async throws {
        let fixture = try GroupFixture()
        _ = try await fixture.run(account("ada"))
        _ = try await fixture.run(account("bob"))
        _ = try await fixture.run(
            .createConversation(
                .with {
                    $0.conversationID = "g"
                    $0.kind = .group
                    $0.title = "t"
                    $0.creator = "u-ada"
                    $0.members = ["u-bob"]
                }
            )
        )
        let before = fixture.host.statistics
        let seqs = try await withThrowingTaskGroup(of: UInt64.self) { group in
            for sender in 0..<400 {
                group.addTask {
                    let outcome = try await fixture.run(
                        .postMessage(
                            .with {
                                $0.conversationID = "g"
                                $0.sender = sender % 2 == 0 ? "u-ada" : "u-bob"
                                $0.clientMessageID = "m\(sender)"
                                $0.payload = Data("message \(sender)".utf8)
                            }
                        )
                    )
                    guard case .posted(let record, false) = outcome else {
                        throw ChatError(.internalError, "\(outcome)")
                    }
                    return record.seq
                }
            }
            var seqs: [UInt64] = []
            for try await seq in group { seqs.append(seq) }
            return seqs
        }
        #expect(seqs.sorted() == Array(1...400))
        let after = fixture.host.statistics
        #expect(after.appliedEntries - before.appliedEntries == 400)
        // Group commit: far fewer fsyncs than messages.
        #expect(after.syncedBatches - before.syncedBatches < 400)
    }

    @Test func everythingAcknowledgedSurvivesARestart() async throws {
        let fixture = try GroupFixture()
        _ = try await fixture.run(account("ada"))
        _ = try await fixture.run(account("bob"))
        _ = try await fixture.run(
            .createConversation(
                .with {
                    $0.conversationID = "d"
                    $0.kind = .direct
                    $0.creator = "u-ada"
                    $0.members = ["u-bob"]
                }
            )
        )
        for index in 1...20 {
            _ = try await fixture.run(
                .postMessage(
                    .with {
                        $0.conversationID = "d"
                        $0.sender = "u-ada"
                        $0.clientMessageID = "m\(index)"
                        $0.payload = Data("\(index)".utf8)
                    }
                )
            )
        }
        try fixture.restart()
        #expect(try fixture.queries.conversation(id: "d")?.lastSeq == 20)
        let page = try fixture.queries.messages(conversation: "d", after: 0, limit: 100)
        #expect(page.messages.map(\.seq) == Array(1...20))
        // The group continues where it stopped, and replays nothing twice.
        let next = try await fixture.run(
            .postMessage(
                .with {
                    $0.conversationID = "d"
                    $0.sender = "u-bob"
                    $0.clientMessageID = "after-restart"
                    $0.payload = Data("21".utf8)
                }
            )
        )
        guard case .posted(let record, false) = next else {
            Issue.record("\(next)")
            return
        }
        #expect(record.seq == 21)
        let resend = try await fixture.run(
            .postMessage(
                .with {
                    $0.conversationID = "d"
                    $0.sender = "u-ada"
                    $0.clientMessageID = "m5"
                    $0.payload = Data("5".utf8)
                }
            )
        )
        guard case .posted(let original, true) = resend else {
            Issue.record("\(resend)")
            return
        }
        #expect(original.seq == 5)
    }

    @Test func aStoppedGroupRefusesProposals() async throws {
        let fixture = try GroupFixture()
        fixture.host.stop()
        await #expect(throws: ClusterError.self) { _ = try await fixture.run(account("late")) }
    }
}
