import SwiftProtobuf
import WarblerStorage
import WarblerWire

/// One conversation as a member sees it in their list.
public struct ConversationSummary: Sendable, Equatable {
    public var conversation: ConversationRecord
    public var lastMessage: MessageRecord?
    /// The member's read marker.
    public var readSeq: UInt64
    /// Messages after the read marker (the member's own messages move their marker, so they never count).
    public var unreadCount: UInt64 { conversation.lastSeq - min(readSeq, conversation.lastSeq) }
}

/// A page of history.
public struct HistoryPage: Sendable, Equatable {
    /// Ascending seq.
    public var messages: [MessageRecord]
    /// More messages exist in the direction that was read.
    public var hasMore: Bool
}

/// Reads of the applied chat state. Every read is local to this node's state; callers decide (ReadIndex) how
/// fresh it must be.
public struct ChatQueries: Sendable {
    let database: Database
    let family: ColumnFamily
    public let limits: ChatLimits

    public init(database: Database, family: ColumnFamily, limits: ChatLimits = ChatLimits()) {
        self.database = database
        self.family = family
        self.limits = limits
    }

    private func decode<M: SwiftProtobuf.Message>(
        _ type: M.Type,
        _ bytes: [UInt8],
        _ what: String
    ) throws(StorageError)
        -> M
    {
        do { return try M(serializedBytes: bytes) } catch {
            throw StorageError(.corruption, "\(what) cannot be decoded", cause: "\(error)")
        }
    }

    public func account(named name: String) throws(StorageError) -> AccountRecord? {
        guard let id = try database.get(ChatKeys.accountByName(name), in: family) else { return nil }
        return try account(id: String(decoding: id, as: UTF8.self))
    }

    public func account(id: String) throws(StorageError) -> AccountRecord? {
        guard let bytes = try database.get(ChatKeys.account(id), in: family) else { return nil }
        return try decode(AccountRecord.self, bytes, "account \(id)")
    }

    /// True when at least one account exists (a node with none tells its operator how to create the first).
    public func hasAccounts() throws(StorageError) -> Bool {
        !(try database.scan(in: family, from: [ChatKeys.accountTag], to: [ChatKeys.accountTag + 1], limit: 1)).isEmpty
    }

    public func conversation(id: String) throws(StorageError) -> ConversationRecord? {
        guard let bytes = try database.get(ChatKeys.conversation(id), in: family) else { return nil }
        return try decode(ConversationRecord.self, bytes, "conversation \(id)")
    }

    /// The conversation if `user` is a member of it.
    public func conversation(id: String, member user: String) throws(StorageError) -> ConversationRecord? {
        guard let record = try conversation(id: id), record.members.contains(user) else { return nil }
        return record
    }

    /// The direct conversation between two users, if it exists.
    public func directConversation(between a: String, and b: String) throws(StorageError) -> ConversationRecord? {
        guard let id = try database.get(ChatKeys.directPair(a, b), in: family) else { return nil }
        return try conversation(id: String(decoding: id, as: UTF8.self))
    }

    public func readMarker(user: String, conversation: String) throws(StorageError) -> UInt64? {
        try database.get(ChatKeys.membership(user: user, conversation: conversation), in: family)
            .flatMap(ChatKeys.decodeUInt64)
    }

    /// The user's conversations, most recent activity first, with last message and unread count.
    public func conversations(of user: String) throws(StorageError) -> [ConversationSummary] {
        let range = ChatKeys.memberships(user: user)
        var summaries: [ConversationSummary] = []
        let prefixLength = range.start.count
        for row in try database.scan(in: family, from: range.start, to: range.end) {
            let idBytes = row.key[(prefixLength + 1)...]
            let id = String(decoding: idBytes, as: UTF8.self)
            guard let record = try conversation(id: id) else {
                throw StorageError(.corruption, "membership of \(user) names missing conversation \(id)")
            }
            let last = record.lastSeq > 0 ? try message(conversation: id, seq: record.lastSeq) : nil
            summaries.append(
                ConversationSummary(
                    conversation: record,
                    lastMessage: last,
                    readSeq: ChatKeys.decodeUInt64(row.value) ?? 0
                )
            )
        }
        return summaries.sorted {
            ($0.conversation.lastActivityUnixMs, $0.conversation.conversationID)
                > ($1.conversation.lastActivityUnixMs, $1.conversation.conversationID)
        }
    }

    public func message(conversation: String, seq: UInt64) throws(StorageError) -> MessageRecord? {
        guard let bytes = try database.get(ChatKeys.message(conversation: conversation, seq: seq), in: family) else {
            return nil
        }
        return try decode(MessageRecord.self, bytes, "message \(conversation)/\(seq)")
    }

    /// Up to `limit` messages strictly after `afterSeq`, ascending.
    public func messages(conversation: String, after afterSeq: UInt64, limit: Int) throws(StorageError) -> HistoryPage {
        let limit = clamp(limit)
        let rows = try database.scan(
            in: family,
            from: ChatKeys.message(conversation: conversation, seq: afterSeq + 1),
            to: ChatKeys.message(conversation: conversation, seq: .max),
            limit: limit + 1
        )
        var messages: [MessageRecord] = []
        for row in rows.prefix(limit) { messages.append(try decode(MessageRecord.self, row.value, "message")) }
        return HistoryPage(messages: messages, hasMore: rows.count > limit)
    }

    /// Up to `limit` messages strictly before `beforeSeq` (0 = from the newest), ascending.
    public func messages(conversation: String, before beforeSeq: UInt64, limit: Int) throws(StorageError) -> HistoryPage
    {
        let limit = clamp(limit)
        let end = beforeSeq == 0 ? UInt64.max : beforeSeq
        let iterator = database.makeIterator(
            in: family,
            upperBound: ChatKeys.message(conversation: conversation, seq: end)
        )
        let lower = ChatKeys.message(conversation: conversation, seq: 0)
        iterator.seekToLast()
        var newestFirst: [MessageRecord] = []
        var hasMore = false
        while iterator.isValid {
            let key = iterator.key
            guard key.count == lower.count, key.starts(with: lower.prefix(lower.count - 8)) else { break }
            if newestFirst.count == limit {
                hasMore = true
                break
            }
            newestFirst.append(try decode(MessageRecord.self, iterator.value, "message"))
            iterator.previous()
        }
        try iterator.checkError()
        return HistoryPage(messages: newestFirst.reversed(), hasMore: hasMore)
    }

    private func clamp(_ limit: Int) -> Int { limit <= 0 ? 50 : min(limit, limits.maxPageSize) }
}
