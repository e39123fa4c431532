import Foundation
import WarblerChat
import WarblerWire

/// Stored records as the client protocol shows them.
enum ClientRecords {
    static func message(_ record: MessageRecord) -> Warbler_V1_ChatMessage {
        .with {
            $0.conversationID = record.conversationID
            $0.seq = record.seq
            $0.sender = record.sender
            $0.clientMessageID = record.clientMessageID
            $0.payload = record.payload
            $0.serverTimeUnixMs = record.timeUnixMs
        }
    }

    static func conversation(
        _ record: ConversationRecord,
        lastMessage: MessageRecord?,
        readSeq: UInt64
    )
        -> Warbler_V1_Conversation
    {
        .with {
            $0.conversationID = record.conversationID
            $0.kind = record.kind == .direct ? .direct : .group
            $0.title = record.title
            $0.members = record.members
            $0.lastSeq = record.lastSeq
            if let lastMessage { $0.lastMessage = message(lastMessage) }
            $0.readSeq = min(readSeq, record.lastSeq)
            $0.unreadCount = record.lastSeq - min(readSeq, record.lastSeq)
        }
    }

    static func conversation(_ summary: ConversationSummary) -> Warbler_V1_Conversation {
        conversation(summary.conversation, lastMessage: summary.lastMessage, readSeq: summary.readSeq)
    }
}
