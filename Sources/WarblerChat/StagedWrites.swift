import Foundation
import WarblerStorage

/// Writes of one apply round, visible to later reads of the same round (RocksDB batches are write-only), so
/// that several commands in one batch see each other's effects. They go into the ``WriteBatch`` at
/// ``flush()``, each key once with its last value: a round of many messages in one conversation writes the
/// conversation record, the sender's read marker and the applied index once, not once per message.
public struct StagedWrites {
    let database: Database
    let family: ColumnFamily
    /// The group's key prefix (`group u32`): every key of a group's state starts with it.
    let prefix: [UInt8]
    /// The batch the caller writes once the round is applied and flushed.
    public let batch: WriteBatch
    private var overlay: [Key: [UInt8]?] = [:]
    /// Conversation records read or written this round, decoded (a round of many messages in one conversation
    /// decodes and encodes its record once), and those to write at ``flush()``.
    private var conversations: [String: ConversationRecord] = [:]
    private var changedConversations: Set<String> = []

    /// Starts a round over `family`, staging into `batch`, with room for `capacity` keys (a message stages
    /// two, and the round's conversation and read markers a few more) so that the overlay does not grow by
    /// copying itself while the round is staged.
    public init(database: Database, family: ColumnFamily, group: UInt32, batch: WriteBatch, capacity: Int = 0) {
        self.database = database
        self.family = family
        self.prefix = ChatKeys.prefix(group)
        self.batch = batch
        overlay.reserveCapacity(capacity)
    }

    func get(_ key: [UInt8]) throws(StorageError) -> [UInt8]? {
        if let staged = overlay[Key(key)] { return staged }
        return try database.get(prefix + key, in: family)
    }

    mutating func put(_ key: [UInt8], _ value: [UInt8]) {
        overlay[Key(key)] = .some(value)
    }

    /// The conversation record `id`, if it exists.
    mutating func conversation(_ id: String) throws -> ConversationRecord? {
        if let record = conversations[id] { return record }
        guard let bytes = try get(ChatKeys.conversation(id)) else { return nil }
        let record = try ConversationRecord(serializedBytes: bytes)
        conversations[id] = record
        return record
    }

    /// Stages the conversation record (encoded once, at ``flush()``).
    mutating func put(conversation record: ConversationRecord) {
        conversations[record.conversationID] = record
        changedConversations.insert(record.conversationID)
    }

    mutating func delete(_ key: [UInt8]) {
        overlay[Key(key)] = .some(nil)
    }

    /// Stages every write of the round into ``batch`` (the final value of each key) and starts over.
    public mutating func flush() throws(StorageError) {
        for id in changedConversations {
            do { overlay[Key(ChatKeys.conversation(id))] = .some(try conversations[id]!.serializedBytes()) } catch {
                throw StorageError(.invalidArgument, "conversation \(id) cannot be encoded", cause: "\(error)")
            }
        }
        changedConversations = []
        conversations = [:]
        // In key order: the memtable's skip list starts each insert from where the previous one went, so
        // neighbouring keys (a conversation's new messages) cost a short search instead of a full one.
        for (key, value) in overlay.sorted(by: { $0.key < $1.key }) {
            if let value {
                batch.put(prefix + key.bytes, value, in: family)
            } else {
                batch.delete(prefix + key.bytes, in: family)
            }
        }
        overlay = [:]
    }

    /// A key of the overlay, hashed as one run of bytes (an array of bytes hashes byte by byte) and ordered as
    /// RocksDB orders keys (`memcmp`, then length).
    struct Key: Hashable, Comparable {
        let bytes: [UInt8]
        init(_ bytes: [UInt8]) { self.bytes = bytes }
        func hash(into hasher: inout Hasher) { bytes.withUnsafeBytes { hasher.combine(bytes: $0) } }

        static func < (lhs: Key, rhs: Key) -> Bool {
            let order = lhs.bytes.withUnsafeBytes { left in
                rhs.bytes.withUnsafeBytes { right in
                    guard let l = left.baseAddress, let r = right.baseAddress else { return Int32(0) }
                    return memcmp(l, r, min(left.count, right.count))
                }
            }
            return order != 0 ? order < 0 : lhs.bytes.count < rhs.bytes.count
        }
    }
}
