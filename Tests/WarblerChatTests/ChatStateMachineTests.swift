import Foundation
import Synchronization
import Testing
import WarblerChat
import WarblerStorage
import WarblerWire

/// A chat state over a real RocksDB in a temporary directory: accounts in the metadata group (0), every
/// conversation in partition 1 (one partition), as a node applies them.
final class ChatFixture {
    let path: String
    var database: Database!
    var family: ColumnFamily!
    let metadata: ChatStateMachine
    let machine = ChatStateMachine(group: 1)
    var index: UInt64 = 0
    var time: Int64 = 1_000

    init(limits: ChatLimits = ChatLimits()) throws {
        metadata = ChatStateMachine(group: 0, limits: limits)
        path = NSTemporaryDirectory() + "warbler-chat-\(UUID().uuidString)"
        try open()
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    func open() throws {
        var options = Database.Options()
        options.columnFamilies = ["chat"]
        database = try Database(path: path, options: options)
        family = try database.columnFamily("chat")
    }

    /// Closes and reopens the database (a restart).
    func reopen() throws {
        database = nil
        family = nil
        try open()
    }

    var queries: ChatQueries { ChatQueries(database: database, family: family, partitionCount: { 1 }) }

    /// Applies commands in one batch (one scheduling round), each at the next index.
    @discardableResult
    func apply(_ bodies: [ChatCommand.OneOf_Body]) throws -> [ApplyOutcome] {
        let batch = WriteBatch()
        var accountWrites = StagedWrites(database: database, family: family, group: 0, batch: batch)
        var writes = StagedWrites(database: database, family: family, group: 1, batch: batch)
        var outcomes: [ApplyOutcome] = []
        for body in bodies {
            index += 1
            time += 10
            var command = ChatCommand()
            command.timeUnixMs = time
            command.body = body
            switch body {
            case .createAccount, .startSession, .endSession:
                outcomes.append(try metadata.apply(command, index: index, to: &accountWrites))
            default:
                outcomes.append(try machine.apply(command, index: index, to: &writes))
            }
        }
        try accountWrites.flush()
        try writes.flush()
        try database.write(batch, sync: true)
        return outcomes
    }

    @discardableResult
    func apply(_ body: ChatCommand.OneOf_Body) throws -> ApplyOutcome { try apply([body])[0] }

    func account(_ name: String) -> ChatCommand.OneOf_Body {
        .createAccount(
            .with {
                $0.userID = "u-\(name)"
                $0.name = name
                $0.passwordHash = Data([1, 2, 3])
            }
        )
    }

    /// A login of `name` whose token hashes to 32 bytes of `tag`, valid for `lifetime` ms from the fixture's time.
    func startSession(_ name: String, _ tag: UInt8, lifetime: Int64 = 1_000) -> ChatCommand.OneOf_Body {
        .startSession(
            .with {
                $0.tokenHash = Data(repeating: tag, count: 32)
                $0.userID = "u-\(name)"
                $0.expiresUnixMs = time + lifetime
            }
        )
    }

    func endSession(_ tag: UInt8) -> ChatCommand.OneOf_Body {
        .endSession(.with { $0.tokenHash = Data(repeating: tag, count: 32) })
    }

    func group(_ id: String, by creator: String, members: [String], title: String = "team") -> ChatCommand.OneOf_Body {
        .createConversation(
            .with {
                $0.conversationID = id
                $0.kind = .group
                $0.title = title
                $0.creator = "u-\(creator)"
                $0.members = members.map { "u-\($0)" }
            }
        )
    }

    func direct(_ id: String, _ a: String, _ b: String) -> ChatCommand.OneOf_Body {
        .createConversation(
            .with {
                $0.conversationID = id
                $0.kind = .direct
                $0.creator = "u-\(a)"
                $0.members = ["u-\(b)"]
            }
        )
    }

    func post(_ conversation: String, by sender: String, id: String, _ text: String) -> ChatCommand.OneOf_Body {
        .postMessage(
            .with {
                $0.conversationID = conversation
                $0.sender = "u-\(sender)"
                $0.clientMessageID = id
                $0.payload = Data(text.utf8)
            }
        )
    }
}

func refusal(_ outcome: ApplyOutcome) -> ErrorCode? {
    if case .refused(let error) = outcome { return error.code }
    return nil
}

func posted(_ outcome: ApplyOutcome) -> (seq: UInt64, duplicate: Bool)? {
    if case .posted(let record, let duplicate) = outcome { return (record.seq, duplicate) }
    return nil
}

struct ChatStateMachineTests {
    @Test func accountsHaveUniqueValidNames() throws {
        let chat = try ChatFixture()
        #expect(refusal(try chat.apply(chat.account("ada"))) == nil)
        #expect(
            refusal(
                try chat.apply(
                    .createAccount(
                        .with {
                            $0.userID = "u-x"
                            $0.name = "ada"
                        }
                    )
                )
            ) == .invalidArgument
        )
        #expect(
            refusal(
                try chat.apply(
                    .createAccount(
                        .with {
                            $0.userID = "u-y"
                            $0.name = "bad name"
                        }
                    )
                )
            ) == .invalidArgument
        )
        #expect(
            refusal(
                try chat.apply(
                    .createAccount(
                        .with {
                            $0.userID = "u-z"
                            $0.name = ""
                        }
                    )
                )
            ) == .invalidArgument
        )
        #expect(try chat.queries.account(named: "ada")?.userID == "u-ada")
        #expect(try chat.queries.account(named: "ada")?.role == .member)
        #expect(try chat.queries.account(named: "bad name") == nil)
        #expect(try chat.queries.hasAccounts())
    }

    @Test func aDirectConversationIsFoundAgainNotDuplicated() throws {
        let chat = try ChatFixture()
        try chat.apply([chat.account("ada"), chat.account("bob")])
        guard case .conversation(let first, true) = try chat.apply(chat.direct("d1", "ada", "bob")) else {
            Issue.record("direct conversation not created")
            return
        }
        // Either side asking again, even with a fresh id, gets the same conversation.
        guard case .conversation(let again, false) = try chat.apply(chat.direct("d2", "bob", "ada")) else {
            Issue.record("a second direct conversation was created")
            return
        }
        #expect(again.conversationID == first.conversationID)
        #expect(try chat.queries.conversation(id: "d2") == nil)
        #expect(try chat.queries.conversation(id: "d1")?.members == ["u-ada", "u-bob"])
        #expect(refusal(try chat.apply(chat.direct("d3", "ada", "ada"))) == .invalidArgument)
    }

    @Test func sequenceNumbersAreGapFreeFromOneEvenWithinOneBatch() throws {
        let chat = try ChatFixture()
        try chat.apply([chat.account("ada"), chat.account("bob"), chat.group("g", by: "ada", members: ["bob"])])
        let outcomes = try chat.apply(
            (1...10).map { chat.post("g", by: $0 % 2 == 0 ? "ada" : "bob", id: "m\($0)", "hello \($0)") }
        )
        #expect(outcomes.compactMap(posted).map(\.seq) == Array(1...10))
        let more = try chat.apply(chat.post("g", by: "ada", id: "m11", "eleven"))
        #expect(posted(more)?.seq == 11)
        let page = try chat.queries.messages(conversation: "g", after: 0, limit: 100)
        #expect(page.messages.map(\.seq) == Array(1...11))
        #expect(!page.hasMore)
    }

    @Test func resendingAClientMessageIDNeverCreatesASecondMessage() throws {
        let chat = try ChatFixture()
        try chat.apply([chat.account("ada"), chat.account("bob"), chat.group("g", by: "ada", members: ["bob"])])
        let first = try chat.apply(chat.post("g", by: "ada", id: "same", "once"))
        // The same id in the same batch and in a later one.
        let again = try chat.apply([
            chat.post("g", by: "ada", id: "same", "once"), chat.post("g", by: "ada", id: "same", "x"),
        ])
        #expect(posted(first).map { $0.seq == 1 && !$0.duplicate } == true)
        #expect(again.compactMap(posted).map(\.seq) == [1, 1])
        #expect(again.compactMap(posted).allSatisfy { $0.duplicate })
        // Another sender may use the same client id.
        #expect(posted(try chat.apply(chat.post("g", by: "bob", id: "same", "mine")))?.seq == 2)
        #expect(try chat.queries.conversation(id: "g")?.lastSeq == 2)
    }

    @Test func nonMembersCannotPostAndLearnNothing() throws {
        let chat = try ChatFixture()
        try chat.apply([chat.account("ada"), chat.account("bob"), chat.account("eve")])
        try chat.apply(chat.group("g", by: "ada", members: ["bob"]))
        #expect(refusal(try chat.apply(chat.post("g", by: "eve", id: "1", "hi"))) == .conversationNotFound)
        #expect(refusal(try chat.apply(chat.post("missing", by: "eve", id: "1", "hi"))) == .conversationNotFound)
        #expect(try chat.queries.conversation(id: "g")?.lastSeq == 0)
        #expect(try chat.queries.conversation(id: "g", member: "u-eve") == nil)
    }

    @Test func badPayloadsAndIDsAreRefusedAndChangeNothing() throws {
        let chat = try ChatFixture()
        try chat.apply([chat.account("ada"), chat.account("bob"), chat.group("g", by: "ada", members: ["bob"])])
        #expect(refusal(try chat.apply(chat.post("g", by: "ada", id: "1", ""))) == .invalidArgument)
        #expect(refusal(try chat.apply(chat.post("g", by: "ada", id: "", "x"))) == .invalidArgument)
        #expect(
            refusal(try chat.apply(chat.post("g", by: "ada", id: String(repeating: "i", count: 65), "x")))
                == .invalidArgument
        )
        let big = String(repeating: "x", count: ChatLimits().maxPayloadBytes + 1)
        #expect(refusal(try chat.apply(chat.post("g", by: "ada", id: "2", big))) == .payloadTooLarge)
        #expect(try chat.queries.conversation(id: "g")?.lastSeq == 0)
        #expect(try chat.queries.messages(conversation: "g", after: 0, limit: 10).messages.isEmpty)
    }

    @Test func membershipChangesFollowTheRules() throws {
        let chat = try ChatFixture()
        try chat.apply(["ada", "bob", "cy", "dee"].map { chat.account($0) })
        try chat.apply(chat.group("g", by: "ada", members: ["bob"]))
        guard
            case .membersChanged(let record, let added, []) = try chat.apply(
                .addMembers(
                    .with {
                        $0.conversationID = "g"
                        $0.actor = "u-bob"
                        $0.members = ["u-cy", "u-ada"]
                    }
                )
            )
        else {
            Issue.record("members not added")
            return
        }
        #expect(added == ["u-cy"])
        #expect(record.members == ["u-ada", "u-bob", "u-cy"])
        // Only the owner removes others; anyone may leave.
        let bobRemovesCy = Warbler_Chat_V1_RemoveMember.with {
            $0.conversationID = "g"
            $0.actor = "u-bob"
            $0.member = "u-cy"
        }
        #expect(refusal(try chat.apply(.removeMember(bobRemovesCy))) == .forbidden)
        let cyLeaves = Warbler_Chat_V1_RemoveMember.with {
            $0.conversationID = "g"
            $0.actor = "u-cy"
            $0.member = "u-cy"
        }
        #expect(refusal(try chat.apply(.removeMember(cyLeaves))) == nil)
        #expect(refusal(try chat.apply(chat.post("g", by: "cy", id: "1", "still here?"))) == .conversationNotFound)
        #expect(try chat.queries.conversations(of: "u-cy").isEmpty)
        let adaRemovesBob = Warbler_Chat_V1_RemoveMember.with {
            $0.conversationID = "g"
            $0.actor = "u-ada"
            $0.member = "u-bob"
        }
        #expect(refusal(try chat.apply(.removeMember(adaRemovesBob))) == nil)
        #expect(try chat.queries.conversation(id: "g")?.members == ["u-ada"])
        // Direct conversations never change members.
        try chat.apply(chat.direct("d", "ada", "dee"))
        #expect(
            refusal(
                try chat.apply(
                    .addMembers(
                        .with {
                            $0.conversationID = "d"
                            $0.actor = "u-ada"
                            $0.members = ["u-bob"]
                        }
                    )
                )
            ) == .invalidArgument
        )
    }

    @Test func conversationListShowsLastMessageAndUnreadCounts() throws {
        let chat = try ChatFixture()
        try chat.apply(["ada", "bob", "cy"].map { chat.account($0) })
        try chat.apply([chat.group("g", by: "ada", members: ["bob", "cy"]), chat.direct("d", "ada", "bob")])
        try chat.apply([chat.post("g", by: "bob", id: "1", "one"), chat.post("g", by: "cy", id: "2", "two")])
        try chat.apply(chat.post("d", by: "bob", id: "3", "psst"))
        var list = try chat.queries.conversations(of: "u-ada")
        #expect(list.map(\.conversation.conversationID) == ["d", "g"])
        #expect(list.map(\.unreadCount) == [1, 2])
        #expect(list.first?.lastMessage?.payload == Data("psst".utf8))
        // Reading moves the marker forward only, and never past the last message.
        try chat.apply(
            .markRead(
                .with {
                    $0.conversationID = "g"
                    $0.user = "u-ada"
                    $0.seq = 99
                }
            )
        )
        try chat.apply(
            .markRead(
                .with {
                    $0.conversationID = "g"
                    $0.user = "u-ada"
                    $0.seq = 1
                }
            )
        )
        #expect(try chat.queries.readMarker(user: "u-ada", conversation: "g") == 2)
        // Posting marks one's own conversation read.
        try chat.apply(chat.post("d", by: "ada", id: "4", "hi"))
        list = try chat.queries.conversations(of: "u-ada")
        #expect(list.map(\.unreadCount) == [0, 0])
        #expect(
            try chat.queries.conversations(of: "u-bob").first { $0.conversation.conversationID == "d" }?.unreadCount
                == 1
        )
    }

    @Test func historyPagesInBothDirections() throws {
        let chat = try ChatFixture()
        try chat.apply([chat.account("ada"), chat.account("bob"), chat.group("g", by: "ada", members: ["bob"])])
        try chat.apply(chat.group("h", by: "ada", members: ["bob"]))
        try chat.apply((1...25).map { chat.post("g", by: "ada", id: "m\($0)", "\($0)") })
        try chat.apply(chat.post("h", by: "ada", id: "other", "elsewhere"))
        let newest = try chat.queries.messages(conversation: "g", before: 0, limit: 10)
        #expect(newest.messages.map(\.seq) == Array(16...25))
        #expect(newest.hasMore)
        let older = try chat.queries.messages(conversation: "g", before: 16, limit: 10)
        #expect(older.messages.map(\.seq) == Array(6...15))
        let oldest = try chat.queries.messages(conversation: "g", before: 6, limit: 10)
        #expect(oldest.messages.map(\.seq) == Array(1...5))
        #expect(!oldest.hasMore)
        let after = try chat.queries.messages(conversation: "g", after: 20, limit: 3)
        #expect(after.messages.map(\.seq) == [21, 22, 23])
        #expect(after.hasMore)
        #expect(try chat.queries.messages(conversation: "h", before: 0, limit: 10).messages.map(\.seq) == [1])
        #expect(try chat.queries.messages(conversation: "empty", before: 0, limit: 10).messages.isEmpty)
    }

    @Test func replayingAppliedIndexesAfterARestartChangesNothing() throws {
        let chat = try ChatFixture()
        try chat.apply([chat.account("ada"), chat.account("bob"), chat.group("g", by: "ada", members: ["bob"])])
        try chat.apply((1...5).map { chat.post("g", by: "ada", id: "m\($0)", "\($0)") })
        try chat.reopen()
        #expect(try chat.machine.appliedIndex(in: chat.database, family: chat.family) == 8)
        // The log hands the same entries again after a restart: they are recognised and skipped.
        chat.index = 3
        let replay = try chat.apply((1...5).map { chat.post("g", by: "ada", id: "m\($0)", "\($0)") })
        #expect(replay.allSatisfy { $0 == .alreadyApplied })
        #expect(try chat.queries.conversation(id: "g")?.lastSeq == 5)
        #expect(posted(try chat.apply(chat.post("g", by: "bob", id: "n", "next")))?.seq == 6)
    }

    // MARK: - Sessions

    @Test func aSessionIsRecordedUnderItsTokenHashUntilItsLogoutAndSurvivesARestart() throws {
        let chat = try ChatFixture()
        try chat.apply(chat.account("ada"))
        #expect(try chat.apply(chat.startSession("ada", 1)) == .sessionStarted(userID: "u-ada", ended: []))
        let hash = [UInt8](repeating: 1, count: 32)
        try chat.reopen()
        #expect(try chat.queries.session(tokenHash: hash)?.userID == "u-ada")
        #expect(try chat.queries.session(tokenHash: hash)?.expiresUnixMs == chat.time - 10 + 1_000)
        #expect(try chat.queries.sessions(of: "u-ada") == [Data(hash)])
        // The same login applied twice (a retried proposal) records it once.
        #expect(try chat.apply(chat.startSession("ada", 1)) == .sessionStarted(userID: "u-ada", ended: []))
        #expect(try chat.queries.sessions(of: "u-ada").count == 1)

        // Refused, changing nothing: an unknown user, a hash of the wrong size, a session already expired.
        #expect(refusal(try chat.apply(chat.startSession("bob", 2))) == .userNotFound)
        var short = chat.startSession("ada", 3)
        if case .startSession(var start) = short {
            start.tokenHash = Data([3])
            short = .startSession(start)
        }
        #expect(refusal(try chat.apply(short)) == .invalidArgument)
        #expect(refusal(try chat.apply(chat.startSession("ada", 4, lifetime: -1))) == .invalidArgument)
        #expect(try chat.queries.session(tokenHash: [UInt8](repeating: 2, count: 32)) == nil)
        #expect(try chat.queries.sessions(of: "u-ada") == [Data(hash)])

        // A logout ends it; a second one finds nothing.
        #expect(try chat.apply(chat.endSession(1)) == .sessionEnded(userID: "u-ada", ended: [Data(hash)]))
        #expect(try chat.queries.session(tokenHash: hash) == nil)
        #expect(try chat.queries.sessions(of: "u-ada").isEmpty)
        #expect(try chat.apply(chat.endSession(1)) == .sessionEnded(userID: "", ended: []))
    }

    @Test func aLoginBeyondTheUsersBoundEndsTheOldestAndExpiredSessionsGoAtTheNextLogin() throws {
        var limits = ChatLimits()
        limits.maxSessionsPerUser = 3
        let chat = try ChatFixture(limits: limits)
        try chat.apply([chat.account("ada"), chat.account("bob")])
        let hash = { (tag: UInt8) in Data(repeating: tag, count: 32) }
        // Three in one round (each sees the previous ones), then a fourth ends the first.
        let started = try chat.apply([
            chat.startSession("ada", 1), chat.startSession("ada", 2), chat.startSession("ada", 3),
        ])
        #expect(started.allSatisfy { $0 == .sessionStarted(userID: "u-ada", ended: []) })
        #expect(try chat.apply(chat.startSession("ada", 4)) == .sessionStarted(userID: "u-ada", ended: [hash(1)]))
        #expect(try chat.queries.session(tokenHash: Array(hash(1))) == nil)
        #expect(try chat.queries.sessions(of: "u-ada") == [hash(2), hash(3), hash(4)])
        // Another user's sessions are their own.
        #expect(try chat.apply(chat.startSession("bob", 9)) == .sessionStarted(userID: "u-bob", ended: []))

        // A short session expires; the user's next login drops it (and still ends the oldest beyond the bound).
        #expect(try chat.apply(chat.endSession(3)) == .sessionEnded(userID: "u-ada", ended: [hash(3)]))
        try chat.apply(chat.startSession("ada", 5, lifetime: 15))
        chat.time += 100
        #expect(try chat.apply(chat.startSession("ada", 6)) == .sessionStarted(userID: "u-ada", ended: [hash(5)]))
        #expect(try chat.queries.sessions(of: "u-ada") == [hash(2), hash(4), hash(6)])
        #expect(try chat.queries.sessions(of: "u-bob") == [hash(9)])
    }

    @Test func restoringAGroupFromASnapshotIsAnnounced() throws {
        final class Count: Sendable {
            let value = Mutex(0)
        }
        let chat = try ChatFixture()
        let restored = Count()
        let group = ChatGroup(
            machine: ChatStateMachine(group: 0),
            database: chat.database,
            family: chat.family,
            onRestore: { restored.value.withLock { $0 += 1 } }
        )
        let batch = WriteBatch()
        try group.restore([], index: 7, into: batch)
        #expect(restored.value.withLock { $0 } == 1)
        try chat.database.write(batch, sync: true)
        #expect(try group.appliedIndex() == 7)
    }
}
