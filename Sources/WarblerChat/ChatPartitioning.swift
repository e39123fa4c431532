/// Which Raft group holds what: accounts in the metadata group (0), each conversation — its record, members,
/// messages and read markers — in partition `1 + fnv1a64(conversation id) mod partitionCount`. A
/// conversation's membership changes and messages therefore share one log, one order and one leader.
public enum ChatPartitioning {
    /// The metadata group, which also holds accounts.
    public static let metadataGroup: UInt32 = 0

    /// The partition group of a conversation (1…`partitionCount`).
    public static func partition(of conversationID: String, count partitionCount: UInt32) -> UInt32 {
        precondition(partitionCount > 0, "chat: no partitions")
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in conversationID.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        return 1 + UInt32(hash % UInt64(partitionCount))
    }
}
