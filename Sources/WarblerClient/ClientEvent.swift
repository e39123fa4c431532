import WarblerWire

/// Something the node pushed, or a change of the connection.
public enum ClientEvent: Sendable {
    /// A committed message, delivered once and in `seq` order per conversation (live, or from a sync after a
    /// reconnect).
    case message(Warbler_V1_ChatMessage)
    case receipt(Warbler_V1_ReceiptPush)
    case typing(Warbler_V1_TypingPush)
    case presence(Warbler_V1_PresencePush)
    case conversation(Warbler_V1_ConversationPush)
    /// The connection dropped; the client is reconnecting.
    case disconnected(reason: String)
    /// The connection is back and missed messages were synced.
    case reconnected
}
