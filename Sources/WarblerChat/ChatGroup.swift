import SwiftProtobuf
import WarblerCluster
import WarblerRaft
import WarblerStorage
import WarblerWire

/// The chat state of one Raft group, as the group driver applies it: entries are encoded ``ChatCommand``s.
public struct ChatGroup: GroupStateMachine {
    public let machine: ChatStateMachine
    let database: Database
    let family: ColumnFamily

    public init(machine: ChatStateMachine, database: Database, family: ColumnFamily) {
        self.machine = machine
        self.database = database
        self.family = family
    }

    public func appliedIndex() throws(StorageError) -> UInt64 {
        try machine.appliedIndex(in: database, family: family)
    }

    public func apply(_ entries: [Entry], into batch: WriteBatch) throws(StorageError) -> [ApplyOutcome] {
        var writes = StagedWrites(database: database, family: family, batch: batch)
        var outcomes: [ApplyOutcome] = []
        outcomes.reserveCapacity(entries.count)
        for entry in entries {
            let command: ChatCommand
            do {
                command = try ChatCommand(serializedBytes: entry.data)
            } catch {
                // Only this node's gateway proposes, so this is a bug; refusing keeps every replica identical.
                outcomes.append(.refused(ChatError(.internalError, "entry \(entry.index) is not a chat command")))
                continue
            }
            outcomes.append(try machine.apply(command, index: entry.index, to: &writes))
        }
        return outcomes
    }
}
