import NIOCore
import Synchronization
import WarblerChat
import WarblerWire

/// A logged-in connection that can receive pushes, from any thread.
final class ConnectionHandle: Sendable, Hashable {
    let sink: FrameSink
    let userID: String

    init(sink: FrameSink, userID: String) {
        self.sink = sink
        self.userID = userID
    }

    func send(_ frame: Warbler_V1_ServerFrame) { sink.send(frame) }

    func send(_ encoded: inout EncodedFrame) { sink.send(&encoded) }

    static func == (lhs: ConnectionHandle, rhs: ConnectionHandle) -> Bool { lhs === rhs }
    func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }
}

/// Who is online, and delivery of committed events to them.
///
/// ``deliver(_:)`` runs on the group's queue in log order, so each conversation's messages reach every session
/// in `seq` order.
final class SessionRegistry: Sendable {
    private let online = Mutex<[String: Set<ConnectionHandle>]>([:])
    private let queries: ChatQueries

    init(queries: ChatQueries) { self.queries = queries }

    /// Adds a session; returns true if it is the user's first (the user came online).
    func add(_ handle: ConnectionHandle) -> Bool {
        online.withLock { online in
            let first = online[handle.userID, default: []].isEmpty
            online[handle.userID, default: []].insert(handle)
            return first
        }
    }

    /// Removes a session; returns true if it was the user's last (the user went offline).
    func remove(_ handle: ConnectionHandle) -> Bool {
        online.withLock { online in
            guard online[handle.userID]?.remove(handle) != nil else { return false }
            if online[handle.userID]!.isEmpty {
                online[handle.userID] = nil
                return true
            }
            return false
        }
    }

    func sessions(of users: some Sequence<String>) -> [ConnectionHandle] {
        online.withLock { online in users.flatMap { online[$0].map(Array.init) ?? [] } }
    }

    /// Pushes to `users` (every session of each).
    func push(
        _ frame: Warbler_V1_ServerFrame,
        to users: some Sequence<String>,
        except excluded: ConnectionHandle? = nil
    ) {
        var encoded = EncodedFrame(frame)
        for handle in sessions(of: users) where handle !== excluded { handle.send(&encoded) }
    }

    /// Delivers the effects of applied commands to online sessions.
    func deliver(_ outcomes: [ApplyOutcome]) {
        // A round often holds many messages of one conversation: read its members once per round.
        var members: [String: ConversationRecord] = [:]
        func conversation(_ id: String) -> ConversationRecord? {
            if let known = members[id] { return known }
            let record = try? queries.conversation(id: id)
            members[id] = record
            return record
        }
        // ...and look up its members' sessions once per round, not once per message.
        var recipients: [String: [ConnectionHandle]] = [:]
        for outcome in outcomes {
            switch outcome {
            case .posted(let message, duplicate: false):
                let id = message.conversationID
                let handles: [ConnectionHandle]
                if let known = recipients[id] {
                    handles = known
                } else {
                    guard let conversation = conversation(id) else { continue }
                    handles = sessions(of: conversation.members)
                    recipients[id] = handles
                }
                var frame = Warbler_V1_ServerFrame()
                frame.messagePush.message = ClientRecords.message(message)
                var encoded = EncodedFrame(frame)
                for handle in handles { handle.send(&encoded) }
            case .readMarked(let conversationID, let user, let seq):
                guard let conversation = conversation(conversationID) else { continue }
                var frame = Warbler_V1_ServerFrame()
                frame.receiptPush = .with {
                    $0.conversationID = conversationID
                    $0.user = user
                    $0.readSeq = seq
                }
                push(frame, to: conversation.members.filter { $0 != user })
            case .conversation(let record, created: true):
                members[record.conversationID] = record
                recipients[record.conversationID] = nil
                var frame = Warbler_V1_ServerFrame()
                frame.conversationPush.conversation = ClientRecords.conversation(record, lastMessage: nil, readSeq: 0)
                push(frame, to: record.members)
            case .membersChanged(let record, _, let removed):
                members[record.conversationID] = record
                recipients[record.conversationID] = nil
                var frame = Warbler_V1_ServerFrame()
                let lastMessage = try? queries.message(conversation: record.conversationID, seq: record.lastSeq)
                frame.conversationPush.conversation = ClientRecords.conversation(
                    record,
                    lastMessage: lastMessage,
                    readSeq: 0
                )
                push(frame, to: record.members)
                frame.conversationPush.removed = true
                push(frame, to: removed)
            default:
                continue
            }
        }
    }
}
