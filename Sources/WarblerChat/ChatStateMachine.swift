import Foundation
import SwiftProtobuf
import WarblerStorage
import WarblerWire

public typealias ChatCommand = Warbler_Chat_V1_Command
public typealias AccountRecord = Warbler_Chat_V1_AccountRecord
public typealias ConversationRecord = Warbler_Chat_V1_ConversationRecord
public typealias MessageRecord = Warbler_Chat_V1_MessageRecord
public typealias SessionRecord = Warbler_Chat_V1_SessionRecord

/// What applying one command did.
public enum ApplyOutcome: Sendable, Equatable {
    case accountCreated(AccountRecord)
    /// `created` is false when a direct conversation between the two users already existed.
    case conversation(ConversationRecord, created: Bool)
    case membersChanged(ConversationRecord, added: [String], removed: [String])
    /// `duplicate` is true when the sender had already posted this client message id.
    case posted(MessageRecord, duplicate: Bool)
    /// The user's read marker moved forward to `seq`.
    case readMarked(conversationID: String, user: String, seq: UInt64)
    /// The command was valid but changed nothing (a read marker that was already further).
    case unchanged
    /// The command was refused; it changed nothing but the applied index.
    case refused(ChatError)
    /// The command's index was applied before (a replay after a restart).
    case alreadyApplied
    /// A session of `userID` was recorded; `ended` holds the token hashes of the user's sessions it ended (expired
    /// ones, and the oldest beyond ``ChatLimits/maxSessionsPerUser``).
    case sessionStarted(userID: String, ended: [Data])
    /// A session ended (a logout); `ended` is empty when no such session was recorded.
    case sessionEnded(userID: String, ended: [Data])
}

/// Applies committed chat commands to the state in the `chat` column family.
///
/// Deterministic: the outcome depends only on the state and the command (which carries its own time and
/// identifiers), so every replica that applies the same log holds the same state. Each apply also records the
/// applied index in the same batch, so a restart resumes exactly where the durable state ends.
public struct ChatStateMachine: Sendable {
    /// The Raft group whose log feeds this state.
    public let group: UInt32
    public let limits: ChatLimits

    public init(group: UInt32, limits: ChatLimits = ChatLimits()) {
        self.group = group
        self.limits = limits
    }

    /// The last index applied, as stored.
    public func appliedIndex(in database: Database, family: ColumnFamily) throws(StorageError) -> UInt64 {
        guard let bytes = try database.get(ChatKeys.prefix(group) + ChatKeys.appliedIndex, in: family) else {
            return 0
        }
        return ChatKeys.decodeUInt64(bytes) ?? 0
    }

    /// Applies the command committed at `index`, staging its writes.
    public func apply(
        _ command: ChatCommand,
        index: UInt64,
        to writes: inout StagedWrites
    ) throws(StorageError)
        -> ApplyOutcome
    {
        let appliedKey = ChatKeys.appliedIndex
        if let bytes = try writes.get(appliedKey), let applied = ChatKeys.decodeUInt64(bytes), index <= applied {
            return .alreadyApplied
        }
        writes.put(appliedKey, ChatKeys.encode(index))
        do {
            switch command.body {
            case .createAccount(let create): return try createAccount(create, time: command.timeUnixMs, &writes)
            case .createConversation(let create):
                return try createConversation(create, time: command.timeUnixMs, &writes)
            case .addMembers(let add): return try addMembers(add, time: command.timeUnixMs, &writes)
            case .removeMember(let remove): return try removeMember(remove, time: command.timeUnixMs, &writes)
            case .postMessage(let post): return try postMessage(post, time: command.timeUnixMs, &writes)
            case .markRead(let mark): return try markRead(mark, &writes)
            case .startSession(let start): return try startSession(start, time: command.timeUnixMs, &writes)
            case .endSession(let end): return try endSession(end, &writes)
            case nil: return .refused(ChatError(.unknownRequest, "empty command at index \(index)"))
            }
        } catch let error as ChatError {
            return .refused(error)
        } catch let error as StorageError {
            throw error
        } catch {
            throw StorageError(.corruption, "chat state cannot be decoded at index \(index)", cause: "\(error)")
        }
    }

    // MARK: - Accounts

    private func createAccount(
        _ create: Warbler_Chat_V1_CreateAccount,
        time: Int64,
        _ writes: inout StagedWrites
    )
        throws -> ApplyOutcome
    {
        try validateName(create.name)
        guard !create.userID.isEmpty, create.userID.utf8.count <= 64 else {
            throw ChatError(.invalidArgument, "user_id must have 1 to 64 bytes")
        }
        if try writes.get(ChatKeys.accountByName(create.name)) != nil {
            throw ChatError(.invalidArgument, "the name '\(create.name)' is taken")
        }
        if try writes.get(ChatKeys.account(create.userID)) != nil {
            throw ChatError(.invalidArgument, "user id \(create.userID) exists")
        }
        let record = AccountRecord.with {
            $0.userID = create.userID
            $0.name = create.name
            $0.passwordHash = create.passwordHash
            $0.role = create.role == .unspecified ? .member : create.role
            $0.createdUnixMs = time
        }
        writes.put(ChatKeys.account(create.userID), try record.serializedBytes())
        writes.put(ChatKeys.accountByName(create.name), Array(create.userID.utf8))
        return .accountCreated(record)
    }

    // MARK: - Sessions

    /// Records a session of an existing account, under its token's hash. The user's expired sessions (as of the
    /// command's time) are dropped, and beyond ``ChatLimits/maxSessionsPerUser`` the oldest.
    private func startSession(
        _ start: Warbler_Chat_V1_StartSession,
        time: Int64,
        _ writes: inout StagedWrites
    ) throws -> ApplyOutcome {
        guard start.tokenHash.count == 32 else { throw ChatError(.invalidArgument, "token_hash must have 32 bytes") }
        guard start.expiresUnixMs > time else { throw ChatError(.invalidArgument, "the session would have expired") }
        guard try writes.get(ChatKeys.account(start.userID)) != nil else {
            throw ChatError(.userNotFound, "no user \(start.userID)")
        }
        let sessionKey = ChatKeys.session(tokenHash: start.tokenHash)
        if try writes.get(sessionKey) != nil { return .sessionStarted(userID: start.userID, ended: []) }
        var list = try userSessions(start.userID, &writes)
        var ended: [Data] = []
        list.sessions.removeAll { session in
            guard session.expiresUnixMs <= time else { return false }
            ended.append(session.tokenHash)
            return true
        }
        while list.sessions.count >= limits.maxSessionsPerUser, !list.sessions.isEmpty {
            ended.append(list.sessions.removeFirst().tokenHash)
        }
        for hash in ended { writes.delete(ChatKeys.session(tokenHash: hash)) }
        list.sessions.append(
            .with {
                $0.tokenHash = start.tokenHash
                $0.expiresUnixMs = start.expiresUnixMs
            }
        )
        writes.put(ChatKeys.userSessions(start.userID), try list.serializedBytes())
        let record = Warbler_Chat_V1_SessionRecord.with {
            $0.userID = start.userID
            $0.createdUnixMs = time
            $0.expiresUnixMs = start.expiresUnixMs
        }
        writes.put(sessionKey, try record.serializedBytes())
        return .sessionStarted(userID: start.userID, ended: ended)
    }

    /// Ends the session with this token hash, if it is recorded.
    private func endSession(_ end: Warbler_Chat_V1_EndSession, _ writes: inout StagedWrites) throws -> ApplyOutcome {
        guard end.tokenHash.count == 32 else { throw ChatError(.invalidArgument, "token_hash must have 32 bytes") }
        let sessionKey = ChatKeys.session(tokenHash: end.tokenHash)
        guard let bytes = try writes.get(sessionKey) else { return .sessionEnded(userID: "", ended: []) }
        let record = try Warbler_Chat_V1_SessionRecord(serializedBytes: bytes)
        writes.delete(sessionKey)
        var list = try userSessions(record.userID, &writes)
        list.sessions.removeAll { $0.tokenHash == end.tokenHash }
        if list.sessions.isEmpty {
            writes.delete(ChatKeys.userSessions(record.userID))
        } else {
            writes.put(ChatKeys.userSessions(record.userID), try list.serializedBytes())
        }
        return .sessionEnded(userID: record.userID, ended: [end.tokenHash])
    }

    private func userSessions(_ userID: String, _ writes: inout StagedWrites) throws -> Warbler_Chat_V1_UserSessions {
        guard let bytes = try writes.get(ChatKeys.userSessions(userID)) else { return .init() }
        return try Warbler_Chat_V1_UserSessions(serializedBytes: bytes)
    }

    /// Names: 1 to `maxNameBytes` of ASCII letters, digits, `.`, `_`, `-`.
    public func validateName(_ name: String) throws(ChatError) {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty, bytes.count <= limits.maxNameBytes else {
            throw ChatError(.invalidArgument, "name must have 1 to \(limits.maxNameBytes) bytes")
        }
        for byte in bytes {
            let allowed =
                (byte >= 0x61 && byte <= 0x7A) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x30 && byte <= 0x39)
                || byte == 0x2E || byte == 0x5F || byte == 0x2D
            guard allowed else {
                throw ChatError(.invalidArgument, "name may hold only letters, digits, '.', '_' and '-'")
            }
        }
    }

    // MARK: - Conversations

    private func createConversation(
        _ create: Warbler_Chat_V1_CreateConversation,
        time: Int64,
        _ writes: inout StagedWrites
    ) throws -> ApplyOutcome {
        guard !create.conversationID.isEmpty, create.conversationID.utf8.count <= 64 else {
            throw ChatError(.invalidArgument, "conversation_id must have 1 to 64 bytes")
        }
        if try writes.conversation(create.conversationID) != nil {
            throw ChatError(.invalidArgument, "conversation \(create.conversationID) exists")
        }
        // Accounts live in the metadata group; the gateway checks that every member exists before proposing.
        let members = Array(Set(create.members + [create.creator])).sorted()
        switch create.kind {
        case .direct:
            guard members.count == 2 else {
                throw ChatError(.invalidArgument, "a direct conversation has exactly two distinct members")
            }
            let pairKey = ChatKeys.directPair(members[0], members[1])
            if let existing = try writes.get(pairKey) {
                // Found again rather than duplicated.
                return .conversation(
                    try loadConversation(String(decoding: existing, as: UTF8.self), &writes),
                    created: false
                )
            }
            writes.put(pairKey, Array(create.conversationID.utf8))
        case .group:
            guard !create.title.isEmpty, create.title.utf8.count <= limits.maxTitleBytes else {
                throw ChatError(.invalidArgument, "title must have 1 to \(limits.maxTitleBytes) bytes")
            }
            guard members.count <= limits.maxMembers else {
                throw ChatError(.invalidArgument, "a group has at most \(limits.maxMembers) members")
            }
        case .unspecified, .UNRECOGNIZED:
            throw ChatError(.invalidArgument, "conversation kind must be direct or group")
        }
        let record = ConversationRecord.with {
            $0.conversationID = create.conversationID
            $0.kind = create.kind
            $0.title = create.kind == .group ? create.title : ""
            $0.creator = create.creator
            $0.members = members
            $0.createdUnixMs = time
            $0.lastActivityUnixMs = time
        }
        writes.put(conversation: record)
        for member in members {
            writes.put(ChatKeys.membership(user: member, conversation: record.conversationID), ChatKeys.encode(0))
        }
        return .conversation(record, created: true)
    }

    private func loadConversation(_ id: String, _ writes: inout StagedWrites) throws -> ConversationRecord {
        guard let record = try writes.conversation(id) else {
            throw ChatError(.conversationNotFound, "no conversation \(id)")
        }
        return record
    }

    /// The conversation, if `user` is a member; otherwise not found (membership is not revealed).
    private func memberConversation(
        _ id: String,
        user: String,
        _ writes: inout StagedWrites
    ) throws -> ConversationRecord {
        let record = try loadConversation(id, &writes)
        guard record.members.contains(user) else {
            throw ChatError(.conversationNotFound, "no conversation \(id)")
        }
        return record
    }

    private func addMembers(
        _ add: Warbler_Chat_V1_AddMembers,
        time: Int64,
        _ writes: inout StagedWrites
    ) throws
        -> ApplyOutcome
    {
        var record = try memberConversation(add.conversationID, user: add.actor, &writes)
        guard record.kind == .group else {
            throw ChatError(.invalidArgument, "members can only be added to group conversations")
        }
        let added = Array(Set(add.members).subtracting(record.members)).sorted()
        guard record.members.count + added.count <= limits.maxMembers else {
            throw ChatError(.invalidArgument, "a group has at most \(limits.maxMembers) members")
        }
        record.members = (record.members + added).sorted()
        record.lastActivityUnixMs = max(record.lastActivityUnixMs, time)
        writes.put(conversation: record)
        for member in added {
            // New members start with everything unread.
            writes.put(ChatKeys.membership(user: member, conversation: record.conversationID), ChatKeys.encode(0))
        }
        return .membersChanged(record, added: added, removed: [])
    }

    private func removeMember(
        _ remove: Warbler_Chat_V1_RemoveMember,
        time: Int64,
        _ writes: inout StagedWrites
    )
        throws -> ApplyOutcome
    {
        var record = try memberConversation(remove.conversationID, user: remove.actor, &writes)
        guard record.kind == .group else {
            throw ChatError(.invalidArgument, "direct conversations have no members to remove")
        }
        guard record.members.contains(remove.member) else {
            throw ChatError(.userNotFound, "\(remove.member) is not a member")
        }
        // Anyone may leave; only the group's creator removes others.
        guard remove.actor == remove.member || remove.actor == record.creator else {
            throw ChatError(.forbidden, "only the group's owner can remove members")
        }
        record.members.removeAll { $0 == remove.member }
        record.lastActivityUnixMs = max(record.lastActivityUnixMs, time)
        writes.put(conversation: record)
        writes.delete(ChatKeys.membership(user: remove.member, conversation: record.conversationID))
        return .membersChanged(record, added: [], removed: [remove.member])
    }

    // MARK: - Messages

    private func postMessage(
        _ post: Warbler_Chat_V1_PostMessage,
        time: Int64,
        _ writes: inout StagedWrites
    ) throws
        -> ApplyOutcome
    {
        guard !post.clientMessageID.isEmpty, post.clientMessageID.utf8.count <= limits.maxClientMessageIDBytes else {
            throw ChatError(
                .invalidArgument,
                "client_message_id must have 1 to \(limits.maxClientMessageIDBytes) bytes"
            )
        }
        guard !post.payload.isEmpty else { throw ChatError(.invalidArgument, "payload must not be empty") }
        guard post.payload.count <= limits.maxPayloadBytes else {
            throw ChatError(
                .payloadTooLarge,
                "payload of \(post.payload.count) bytes exceeds \(limits.maxPayloadBytes)"
            )
        }
        var record = try memberConversation(post.conversationID, user: post.sender, &writes)
        let dedupKey = ChatKeys.dedup(
            conversation: post.conversationID,
            sender: post.sender,
            clientMessageID: post.clientMessageID
        )
        if let bytes = try writes.get(dedupKey), let seq = ChatKeys.decodeUInt64(bytes),
            let stored = try writes.get(ChatKeys.message(conversation: post.conversationID, seq: seq))
        {
            return .posted(try MessageRecord(serializedBytes: stored), duplicate: true)
        }
        let seq = record.lastSeq + 1
        let message = MessageRecord.with {
            $0.conversationID = post.conversationID
            $0.seq = seq
            $0.sender = post.sender
            $0.clientMessageID = post.clientMessageID
            $0.payload = post.payload
            $0.timeUnixMs = time
        }
        record.lastSeq = seq
        record.lastActivityUnixMs = max(record.lastActivityUnixMs, time)
        writes.put(ChatKeys.message(conversation: post.conversationID, seq: seq), try message.serializedBytes())
        writes.put(dedupKey, ChatKeys.encode(seq))
        writes.put(conversation: record)
        // Sending marks the conversation read for the sender up to their own message.
        writes.put(ChatKeys.membership(user: post.sender, conversation: post.conversationID), ChatKeys.encode(seq))
        return .posted(message, duplicate: false)
    }

    private func markRead(_ mark: Warbler_Chat_V1_MarkRead, _ writes: inout StagedWrites) throws -> ApplyOutcome {
        let record = try memberConversation(mark.conversationID, user: mark.user, &writes)
        let key = ChatKeys.membership(user: mark.user, conversation: mark.conversationID)
        let current = try writes.get(key).flatMap(ChatKeys.decodeUInt64) ?? 0
        // Read markers only move forward, and never past the last message.
        let target = min(mark.seq, record.lastSeq)
        guard target > current else { return .unchanged }
        writes.put(key, ChatKeys.encode(target))
        return .readMarked(conversationID: mark.conversationID, user: mark.user, seq: target)
    }
}
