import WarblerRaft
import WarblerStorage

/// A node's durable Raft log in the simulation: the in-memory one, or Warbler's RocksDB `RaftLogStore`, so that
/// the storage the broker really uses is exercised under the same faults.
protocol SimulatedLog: AnyObject {
    /// What the node's `RawNode` reads.
    var storage: any RaftStorage { get }
    /// Persists what a Ready asks for (snapshot, entries, hard state).
    func persist(_ ready: Ready) throws
    /// Snapshots the applied state at `index` and discards the entries up to it, as the node's log store does (so
    /// that both kinds of log need a snapshot for the same lagging followers).
    func compact(at index: UInt64, confState: ConfState, data: [UInt8]) throws
    /// The log as a restarted process would load it.
    func reopened() throws -> any SimulatedLog
}

final class InMemoryLog: SimulatedLog {
    let memory: MemoryStorage
    init(_ memory: MemoryStorage) { self.memory = memory }
    var storage: any RaftStorage { memory }

    func persist(_ ready: Ready) throws {
        if let snapshot = ready.snapshot { try memory.applySnapshot(snapshot) }
        memory.append(ready.entries)
        if let hard = ready.hardState { memory.setHardState(hard) }
    }

    func compact(at index: UInt64, confState: ConfState, data: [UInt8]) throws {
        try memory.createSnapshot(at: index, confState: confState, data: data)
        if index >= (try memory.firstIndex()) { try memory.compact(upTo: index) }
    }

    func reopened() throws -> any SimulatedLog { self }
}

/// One group of a shared RocksDB database per node. Writes are not fsync'd: a simulated crash loses exactly the
/// Ready that was never written, which is what an fsync guarantees in a real process.
final class RocksDBLog: SimulatedLog {
    let store: RaftLogStore
    let database: Database
    let family: ColumnFamily
    let group: UInt32

    init(database: Database, family: ColumnFamily, group: UInt32, bootstrap confState: ConfState?) throws {
        self.database = database
        self.family = family
        self.group = group
        store = try RaftLogStore(database: database, family: family, group: group)
        if let confState {
            let batch = WriteBatch()
            try store.bootstrap(confState, into: batch)
            try database.write(batch, sync: false)
        }
    }

    var storage: any RaftStorage { store }

    func persist(_ ready: Ready) throws {
        let batch = WriteBatch()
        store.stage(ready, into: batch)
        try database.write(batch, sync: false)
    }

    func compact(at index: UInt64, confState: ConfState, data: [UInt8]) throws {
        let batch = WriteBatch()
        try store.stageCompaction(at: index, confState: confState, data: data, into: batch)
        try database.write(batch, sync: false)
    }

    func reopened() throws -> any SimulatedLog {
        try RocksDBLog(database: database, family: family, group: group, bootstrap: nil)
    }
}
