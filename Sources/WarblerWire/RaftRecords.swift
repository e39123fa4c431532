import Foundation
import SwiftProtobuf
import WarblerRaft

// Conversions between the Raft core's types and their protobuf records (`warbler_raft.proto`).

extension Warbler_Raft_V1_Entry {
    /// The record of a Raft entry.
    public init(_ entry: Entry) {
        self.init()
        term = entry.term
        index = entry.index
        kind = entry.kind == .confChange ? .confChange : .normal
        data = Data(entry.data)
    }
}

extension Entry {
    /// The Raft entry a record holds.
    public init(_ record: Warbler_Raft_V1_Entry) throws(WireError) {
        let kind: EntryKind
        switch record.kind {
        case .normal: kind = .normal
        case .confChange: kind = .confChange
        case .UNRECOGNIZED(let value): throw WireError(.malformedFrame, "unknown entry kind \(value)")
        }
        self.init(term: record.term, index: record.index, kind: kind, data: [UInt8](record.data))
    }
}

extension Warbler_Raft_V1_HardState {
    public init(_ state: HardState) {
        self.init()
        term = state.term
        vote = state.vote
        commit = state.commit
    }
}

extension HardState {
    public init(_ record: Warbler_Raft_V1_HardState) {
        self.init(term: record.term, vote: record.vote, commit: record.commit)
    }
}

extension Warbler_Raft_V1_Snapshot {
    public init(_ snapshot: Snapshot) {
        self.init()
        data = Data(snapshot.data)
        metadata.index = snapshot.metadata.index
        metadata.term = snapshot.metadata.term
        metadata.confState.voters = snapshot.metadata.confState.voters.sorted()
        metadata.confState.learners = snapshot.metadata.confState.learners.sorted()
    }
}

extension Snapshot {
    public init(_ record: Warbler_Raft_V1_Snapshot) {
        let confState = ConfState(
            voters: Set(record.metadata.confState.voters),
            learners: Set(record.metadata.confState.learners)
        )
        self.init(
            data: [UInt8](record.data),
            metadata: SnapshotMetadata(index: record.metadata.index, term: record.metadata.term, confState: confState)
        )
    }
}

/// Binary encoding of Raft records, for storage and (later) the peer transport.
public enum RaftRecordCodec {
    public static func encode(_ entry: Entry) -> [UInt8] { try! Warbler_Raft_V1_Entry(entry).serializedBytes() }
    public static func encode(_ state: HardState) -> [UInt8] { try! Warbler_Raft_V1_HardState(state).serializedBytes() }
    public static func encode(_ snapshot: Snapshot) -> [UInt8] {
        try! Warbler_Raft_V1_Snapshot(snapshot).serializedBytes()
    }

    public static func encode(_ state: ConfState) -> [UInt8] {
        var record = Warbler_Raft_V1_ConfState()
        record.voters = state.voters.sorted()
        record.learners = state.learners.sorted()
        return try! record.serializedBytes()
    }

    public static func decodeConfState(_ bytes: [UInt8]) throws(WireError) -> ConfState {
        do {
            let record = try Warbler_Raft_V1_ConfState(serializedBytes: bytes)
            return ConfState(voters: Set(record.voters), learners: Set(record.learners))
        } catch {
            throw WireError(.malformedFrame, "conf state cannot be decoded: \(error)")
        }
    }

    public static func decodeEntry(_ bytes: [UInt8]) throws(WireError) -> Entry {
        let record: Warbler_Raft_V1_Entry
        do { record = try Warbler_Raft_V1_Entry(serializedBytes: bytes) } catch {
            throw WireError(.malformedFrame, "not a Raft entry record: \(error)")
        }
        return try Entry(record)
    }

    public static func decodeHardState(_ bytes: [UInt8]) throws(WireError) -> HardState {
        do { return HardState(try Warbler_Raft_V1_HardState(serializedBytes: bytes)) } catch {
            throw WireError(.malformedFrame, "not a hard state record: \(error)")
        }
    }

    public static func decodeSnapshot(_ bytes: [UInt8]) throws(WireError) -> Snapshot {
        do { return Snapshot(try Warbler_Raft_V1_Snapshot(serializedBytes: bytes)) } catch {
            throw WireError(.malformedFrame, "not a snapshot record: \(error)")
        }
    }
}

extension Warbler_Raft_V1_Message {
    /// The record of a Raft message, as the peer transport sends it.
    public init(_ message: WarblerRaft.Message) {
        self.init()
        type = UInt32(message.type.rawValue)
        to = message.to
        from = message.from
        term = message.term
        logTerm = message.logTerm
        index = message.index
        entries = message.entries.map(Warbler_Raft_V1_Entry.init)
        commit = message.commit
        if let snapshot = message.snapshot { self.snapshot = Warbler_Raft_V1_Snapshot(snapshot) }
        reject = message.reject
        rejectHint = message.rejectHint
        context = Data(message.context)
    }
}

extension WarblerRaft.Message {
    /// The Raft message a peer sent.
    ///
    /// - Throws: ``WireError`` with `malformedFrame` for an unknown or local-only type, or a bad entry.
    public init(_ record: Warbler_Raft_V1_Message) throws(WireError) {
        guard record.type <= UInt32(UInt8.max), let type = MessageType(rawValue: UInt8(record.type)), !type.isLocal
        else {
            throw WireError(.malformedFrame, "unknown or local raft message type \(record.type)")
        }
        var entries: [Entry] = []
        entries.reserveCapacity(record.entries.count)
        for entry in record.entries { entries.append(try Entry(entry)) }
        self.init(
            type: type,
            to: record.to,
            from: record.from,
            term: record.term,
            logTerm: record.logTerm,
            index: record.index,
            entries: entries,
            commit: record.commit,
            snapshot: record.hasSnapshot ? Snapshot(record.snapshot) : nil,
            reject: record.reject,
            rejectHint: record.rejectHint,
            context: [UInt8](record.context)
        )
    }
}
