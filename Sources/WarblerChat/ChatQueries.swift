import Foundation
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

/// Reads of the applied chat state. Every read is local to this node's replicas; callers decide (ReadIndex)
/// how fresh it must be. Accounts are read from the metadata group, conversations from their partition.
public struct ChatQueries: Sendable {
    let database: Database
    let family: ColumnFamily
    public let limits: ChatLimits
    private let partitionCount: @Sendable () -> UInt32

    /// `partitionCount` answers the cluster's partition count (0 while unknown: a node that has not joined yet).
    public init(
        database: Database,
        family: ColumnFamily,
        limits: ChatLimits = ChatLimits(),
        partitionCount: @escaping @Sendable () -> UInt32
    ) {
        self.database = database
        self.family = family
        self.limits = limits
        self.partitionCount = partitionCount
    }

    /// The group that holds `conversation`.
    public func group(of conversation: String) throws(StorageError) -> UInt32 {
        let count = partitionCount()
        guard count > 0 else { throw StorageError(.invalidArgument, "this node has not joined a cluster yet") }
        return ChatPartitioning.partition(of: conversation, count: count)
    }

    private func get(_ key: [UInt8], group: UInt32) throws(StorageError) -> [UInt8]? {
        try database.get(ChatKeys.prefix(group) + key, in: family)
    }

    private func get(_ key: [UInt8], conversation: String) throws(StorageError) -> [UInt8]? {
        try get(key, group: try group(of: conversation))
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
        guard let id = try get(ChatKeys.accountByName(name), group: ChatPartitioning.metadataGroup) else { return nil }
        return try account(id: String(decoding: id, as: UTF8.self))
    }

    public func account(id: String) throws(StorageError) -> AccountRecord? {
        guard let bytes = try get(ChatKeys.account(id), group: ChatPartitioning.metadataGroup) else { return nil }
        return try decode(AccountRecord.self, bytes, "account \(id)")
    }

    /// The session recorded under `tokenHash` (the SHA-256 of its token), expired or not.
    public func session(tokenHash: [UInt8]) throws(StorageError) -> SessionRecord? {
        guard let bytes = try get(ChatKeys.session(tokenHash: tokenHash), group: ChatPartitioning.metadataGroup)
        else { return nil }
        return try decode(SessionRecord.self, bytes, "a session")
    }

    /// The token hashes of `user`'s recorded sessions, oldest first (expired ones included until the user's next
    /// login drops them).
    public func sessions(of userID: String) throws(StorageError) -> [Data] {
        guard let bytes = try get(ChatKeys.userSessions(userID), group: ChatPartitioning.metadataGroup) else {
            return []
        }
        return try decode(Warbler_Chat_V1_UserSessions.self, bytes, "the sessions of \(userID)").sessions.map(
            \.tokenHash
        )
    }

    /// True when at least one account exists (a node with none tells its operator how to create the first).
    public func hasAccounts() throws(StorageError) -> Bool {
        let prefix = ChatKeys.prefix(ChatPartitioning.metadataGroup)
        return
            !(try database.scan(
                in: family,
                from: prefix + [ChatKeys.accountTag],
                to: prefix + [ChatKeys.accountTag + 1],
                limit: 1
            )).isEmpty
    }

    public func conversation(id: String) throws(StorageError) -> ConversationRecord? {
        guard let bytes = try get(ChatKeys.conversation(id), conversation: id) else { return nil }
        return try decode(ConversationRecord.self, bytes, "conversation \(id)")
    }

    /// The conversation if `user` is a member of it.
    public func conversation(id: String, member user: String) throws(StorageError) -> ConversationRecord? {
        guard let record = try conversation(id: id), record.members.contains(user) else { return nil }
        return record
    }

    public func readMarker(user: String, conversation: String) throws(StorageError) -> UInt64? {
        try get(ChatKeys.membership(user: user, conversation: conversation), conversation: conversation)
            .flatMap(ChatKeys.decodeUInt64)
    }

    /// The user's conversations in the partitions this node replicates, most recent activity first, with last
    /// message and unread count.
    public func conversations(of user: String) throws(StorageError) -> [ConversationSummary] {
        let count = partitionCount()
        guard count > 0 else { return [] }
        var summaries: [ConversationSummary] = []
        for partition in 1...count {
            summaries += try conversations(of: user, in: partition)
        }
        return summaries.sorted {
            ($0.conversation.lastActivityUnixMs, $0.conversation.conversationID)
                > ($1.conversation.lastActivityUnixMs, $1.conversation.conversationID)
        }
    }

    private func conversations(of user: String, in partition: UInt32) throws(StorageError) -> [ConversationSummary] {
        let groupPrefix = ChatKeys.prefix(partition)
        let range = ChatKeys.memberships(user: user)
        var summaries: [ConversationSummary] = []
        let prefixLength = groupPrefix.count + range.start.count
        for row in try database.scan(in: family, from: groupPrefix + range.start, to: groupPrefix + range.end) {
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
        return summaries
    }

    public func message(conversation: String, seq: UInt64) throws(StorageError) -> MessageRecord? {
        guard let bytes = try get(ChatKeys.message(conversation: conversation, seq: seq), conversation: conversation)
        else {
            return nil
        }
        return try decode(MessageRecord.self, bytes, "message \(conversation)/\(seq)")
    }

    /// Up to `limit` messages strictly after `afterSeq`, ascending.
    public func messages(conversation: String, after afterSeq: UInt64, limit: Int) throws(StorageError) -> HistoryPage {
        let limit = clamp(limit)
        let prefix = ChatKeys.prefix(try group(of: conversation))
        let rows = try database.scan(
            in: family,
            from: prefix + ChatKeys.message(conversation: conversation, seq: afterSeq + 1),
            to: prefix + ChatKeys.message(conversation: conversation, seq: .max),
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
        let prefix = ChatKeys.prefix(try group(of: conversation))
        let iterator = database.makeIterator(
            in: family,
            upperBound: prefix + ChatKeys.message(conversation: conversation, seq: end)
        )
        let lower = prefix + ChatKeys.message(conversation: conversation, seq: 0)
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
