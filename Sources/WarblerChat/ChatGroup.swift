import Foundation
import SwiftProtobuf
import WarblerCluster
import WarblerRaft
import WarblerStorage
import WarblerWire

/// The chat state of one Raft group, as the cluster runtime applies it: entries are encoded ``ChatCommand``s,
/// the state is the group's key range of the `chat` column family.
public struct ChatGroup: GroupStateMachine {
    public let machine: ChatStateMachine
    let database: Database
    let family: ColumnFamily
    /// Called when the group's state is replaced by a snapshot's (staged; written with the apply batch): what
    /// the state held may have changed without an applied command saying so.
    let onRestore: (@Sendable () -> Void)?

    public init(
        machine: ChatStateMachine,
        database: Database,
        family: ColumnFamily,
        onRestore: (@Sendable () -> Void)? = nil
    ) {
        self.machine = machine
        self.database = database
        self.family = family
        self.onRestore = onRestore
    }

    public func appliedIndex() throws(StorageError) -> UInt64 {
        try machine.appliedIndex(in: database, family: family)
    }

    public func apply(_ entries: [Entry], into batch: WriteBatch) throws(StorageError) -> [ApplyOutcome] {
        var writes = StagedWrites(
            database: database,
            family: family,
            group: machine.group,
            batch: batch,
            capacity: 2 * entries.count + 4
        )
        var outcomes: [ApplyOutcome] = []
        outcomes.reserveCapacity(entries.count)
        for entry in entries {
            let command: ChatCommand
            do {
                command = try ChatCommand(serializedBytes: entry.data)
            } catch {
                // Only gateways propose, so this is a bug; refusing keeps every replica identical.
                outcomes.append(.refused(ChatError(.internalError, "entry \(entry.index) is not a chat command")))
                continue
            }
            outcomes.append(try machine.apply(command, index: entry.index, to: &writes))
        }
        try writes.flush()
        return outcomes
    }

    public func snapshotState(reading: ReadSnapshot) throws(StorageError) -> [StateRecord] {
        let range = ChatKeys.range(machine.group)
        let prefixLength = range.start.count
        return try database.scan(in: family, from: range.start, to: range.end, snapshot: reading).map {
            StateRecord(key: Array($0.key[prefixLength...]), value: $0.value)
        }
    }

    public func restore(_ records: [StateRecord], index: UInt64, into batch: WriteBatch) throws(StorageError) {
        destroy(into: batch)
        let prefix = ChatKeys.prefix(machine.group)
        for record in records { batch.put(prefix + record.key, record.value, in: family) }
        batch.put(prefix + ChatKeys.appliedIndex, ChatKeys.encode(index), in: family)
        onRestore?()
    }

    public func destroy(into batch: WriteBatch) {
        let range = ChatKeys.range(machine.group)
        batch.deleteRange(from: range.start, to: range.end, in: family)
    }

    /// The outcome for the node that forwarded the proposal, which answers its client with it: a posted
    /// message goes without its payload.
    public static func encode(_ outcome: ApplyOutcome) -> [UInt8] {
        var record = Warbler_Chat_V1_Outcome()
        switch outcome {
        case .accountCreated(let account): record.accountCreated = account
        case .conversation(let conversation, let created):
            record.conversation = .with {
                $0.conversation = conversation
                $0.created = created
            }
        case .membersChanged(let conversation, let added, let removed):
            record.membersChanged = .with {
                $0.conversation = conversation
                $0.added = added
                $0.removed = removed
            }
        case .posted(var message, let duplicate):
            // Without its payload: the proposer's node only acknowledges the message (it delivers it from its
            // own replica), so the payload — most of the bytes — would cross the network back for nothing.
            message.payload = Data()
            record.posted = .with {
                $0.message = message
                $0.duplicate = duplicate
            }
        case .readMarked(let conversationID, let user, let seq):
            record.readMarked = .with {
                $0.conversationID = conversationID
                $0.user = user
                $0.seq = seq
            }
        case .unchanged: record.unchanged = true
        case .refused(let error):
            record.refused = .with {
                $0.code = error.code.rawValue
                $0.message = error.message
            }
        case .alreadyApplied: record.alreadyApplied = true
        case .sessionStarted(let userID, let ended):
            record.sessionStarted = .with {
                $0.userID = userID
                $0.tokenHashes = ended
            }
        case .sessionEnded(let userID, let ended):
            record.sessionEnded = .with {
                $0.userID = userID
                $0.tokenHashes = ended
            }
        }
        // Serializing a generated message cannot fail.
        return try! record.serializedBytes()
    }

    public static func decodeOutcome(_ bytes: [UInt8]) throws -> ApplyOutcome {
        let record = try Warbler_Chat_V1_Outcome(serializedBytes: bytes)
        switch record.body {
        case .accountCreated(let account): return .accountCreated(account)
        case .conversation(let outcome): return .conversation(outcome.conversation, created: outcome.created)
        case .membersChanged(let change):
            return .membersChanged(change.conversation, added: change.added, removed: change.removed)
        case .posted(let posted): return .posted(posted.message, duplicate: posted.duplicate)
        case .readMarked(let mark):
            return .readMarked(conversationID: mark.conversationID, user: mark.user, seq: mark.seq)
        case .unchanged: return .unchanged
        case .refused(let refusal): return .refused(ChatError(ErrorCode(rawValue: refusal.code), refusal.message))
        case .alreadyApplied: return .alreadyApplied
        case .sessionStarted(let started): return .sessionStarted(userID: started.userID, ended: started.tokenHashes)
        case .sessionEnded(let ended): return .sessionEnded(userID: ended.userID, ended: ended.tokenHashes)
        case nil: throw ChatError(.internalError, "an empty outcome")
        }
    }
}
