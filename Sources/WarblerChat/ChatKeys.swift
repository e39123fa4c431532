import WarblerStorage

/// The key layout of the `chat` column family (documented in `docs/storage.md`). Every key starts with its
/// Raft group (`group u32`), so a group's whole state is one contiguous range (snapshots, deletion). Strings
/// are length-prefixed (one byte) so that no key is a prefix of another by accident; integers are big-endian so
/// keys sort. The functions below return keys *within* a group; ``prefix(_:)`` goes in front.
enum ChatKeys {
    static let appliedIndexTag: UInt8 = 0x01
    static let accountByNameTag: UInt8 = 0x10
    static let accountTag: UInt8 = 0x11
    static let conversationTag: UInt8 = 0x20
    static let membershipTag: UInt8 = 0x21
    static let directPairTag: UInt8 = 0x22
    static let messageTag: UInt8 = 0x30
    static let dedupTag: UInt8 = 0x31
    static let sessionTag: UInt8 = 0x40
    static let userSessionsTag: UInt8 = 0x41

    /// `group u32`: the start of every key of `group`.
    static func prefix(_ group: UInt32) -> [UInt8] {
        var key: [UInt8] = []
        appendBigEndian(group, to: &key)
        return key
    }

    /// Every key of `group`: `[start, end)`.
    static func range(_ group: UInt32) -> (start: [UInt8], end: [UInt8]) {
        var end: [UInt8] = []
        appendBigEndian(UInt64(group) + 1, to: &end)
        return (prefix(group), Array(end[4...]))
    }

    /// `0x01`: the last log index applied to the group's state, written in the same batch as the state.
    static let appliedIndex: [UInt8] = [appliedIndexTag]

    static func accountByName(_ name: String) -> [UInt8] { key(accountByNameTag, name) }
    static func account(_ userID: String) -> [UInt8] { key(accountTag, userID) }
    static func conversation(_ id: String) -> [UInt8] { key(conversationTag, id) }

    /// `0x21 | user | conversation` → the user's read marker (u64).
    static func membership(user: String, conversation: String) -> [UInt8] {
        key(membershipTag, user, conversation)
    }

    /// Every membership of `user`: `[start, end)`.
    static func memberships(user: String) -> (start: [UInt8], end: [UInt8]) {
        let prefix = key(membershipTag, user)
        return (prefix, prefix + [0xFF])
    }

    /// `0x22 | smaller user | larger user` → the direct conversation's id.
    static func directPair(_ a: String, _ b: String) -> [UInt8] {
        let (low, high) = a < b ? (a, b) : (b, a)
        return key(directPairTag, low, high)
    }

    /// `0x30 | conversation | seq u64` → the message.
    static func message(conversation: String, seq: UInt64) -> [UInt8] {
        var key = key(messageTag, conversation, extra: 8)
        appendBigEndian(seq, to: &key)
        return key
    }

    /// `0x31 | conversation | sender | client message id` → seq (u64).
    static func dedup(conversation: String, sender: String, clientMessageID: String) -> [UInt8] {
        key(dedupTag, conversation, sender, clientMessageID)
    }

    /// `0x40 | SHA-256 of the token (32 bytes)` → the session (`SessionRecord`).
    static func session(tokenHash: some Collection<UInt8>) -> [UInt8] { [sessionTag] + tokenHash }

    /// `0x41 | user` → the user's sessions (`UserSessions`).
    static func userSessions(_ userID: String) -> [UInt8] { key(userSessionsTag, userID) }

    /// `tag | len | component | …`, built in one allocation (keys are built for every applied message).
    static func key(_ tag: UInt8, _ components: String..., extra: Int = 0) -> [UInt8] {
        var key: [UInt8] = []
        key.reserveCapacity(1 + extra + components.reduce(0) { $0 + 1 + $1.utf8.count })
        key.append(tag)
        for component in components { append(component, to: &key) }
        return key
    }

    /// Appends `text` length-prefixed (one byte).
    static func append(_ text: String, to key: inout [UInt8]) {
        let count = text.utf8.count
        precondition(count <= 255, "chat: key component of \(count) bytes")
        key.append(UInt8(count))
        key.append(contentsOf: text.utf8)
    }

    static func encode(_ value: UInt64) -> [UInt8] {
        var bytes: [UInt8] = []
        appendBigEndian(value, to: &bytes)
        return bytes
    }

    static func decodeUInt64(_ bytes: [UInt8]) -> UInt64? {
        guard bytes.count == 8 else { return nil }
        return bytes.reduce(0) { $0 << 8 | UInt64($1) }
    }
}
