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
        send(frame, to: sessions(of: users).filter { $0 !== excluded })
    }

    /// Sends `frame` to `handles`, encoded once for all of them.
    private func send(_ frame: Warbler_V1_ServerFrame, to handles: [ConnectionHandle]) {
        var encoded = EncodedFrame(frame)
        for handle in handles { handle.send(&encoded) }
    }

    /// Delivers the effects of applied commands to online sessions.
    func deliver(_ outcomes: [ApplyOutcome]) {
        // A round often holds many messages of one conversation: its members' sessions are looked up once per
        // round (again after a change of members), not once per message.
        var known: [String: [ConnectionHandle]] = [:]
        func recipients(of id: String) -> [ConnectionHandle]? {
            if let handles = known[id] { return handles }
            guard let record = try? queries.conversation(id: id) else { return nil }
            let handles = sessions(of: record.members)
            known[id] = handles
            return handles
        }
        for outcome in outcomes {
            switch outcome {
            case .posted(let message, duplicate: false):
                guard let handles = recipients(of: message.conversationID) else { continue }
                var frame = Warbler_V1_ServerFrame()
                frame.messagePush.message = ClientRecords.message(message)
                send(frame, to: handles)
            case .readMarked(let conversationID, let user, let seq):
                guard let handles = recipients(of: conversationID) else { continue }
                var frame = Warbler_V1_ServerFrame()
                frame.receiptPush = .with {
                    $0.conversationID = conversationID
                    $0.user = user
                    $0.readSeq = seq
                }
                send(frame, to: handles.filter { $0.userID != user })
            case .conversation(let record, created: true):
                let handles = sessions(of: record.members)
                known[record.conversationID] = handles
                var frame = Warbler_V1_ServerFrame()
                frame.conversationPush.conversation = ClientRecords.conversation(record, lastMessage: nil, readSeq: 0)
                send(frame, to: handles)
            case .membersChanged(let record, _, let removed):
                let handles = sessions(of: record.members)
                known[record.conversationID] = handles
                var frame = Warbler_V1_ServerFrame()
                let lastMessage = try? queries.message(conversation: record.conversationID, seq: record.lastSeq)
                frame.conversationPush.conversation = ClientRecords.conversation(
                    record,
                    lastMessage: lastMessage,
                    readSeq: 0
                )
                send(frame, to: handles)
                frame.conversationPush.removed = true
                push(frame, to: removed)
            default:
                continue
            }
        }
    }
}
