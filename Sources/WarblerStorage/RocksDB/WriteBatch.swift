import CRocksDB

/// Operations applied atomically by ``Database/write(_:sync:)``: all or none survive a crash.
public final class WriteBatch {
    let handle: OpaquePointer
    private(set) var families: Set<ColumnFamily> = []

    /// Creates an empty batch.
    public init() { handle = rocksdb_writebatch_create()! }

    deinit { rocksdb_writebatch_destroy(handle) }

    /// The number of operations in the batch.
    public var count: Int { Int(rocksdb_writebatch_count(handle)) }

    /// Stores `value` under `key`.
    public func put(_ key: [UInt8], _ value: [UInt8], in family: ColumnFamily) {
        families.insert(family)
        key.withUnsafeBytes { keyBytes in
            value.withUnsafeBytes { valueBytes in
                rocksdb_writebatch_put_cf(
                    handle,
                    family.handle,
                    keyBytes.baseAddress?.assumingMemoryBound(to: CChar.self),
                    keyBytes.count,
                    valueBytes.baseAddress?.assumingMemoryBound(to: CChar.self),
                    valueBytes.count
                )
            }
        }
    }

    /// Deletes `key`.
    public func delete(_ key: [UInt8], in family: ColumnFamily) {
        families.insert(family)
        key.withUnsafeBytes { keyBytes in
            rocksdb_writebatch_delete_cf(
                handle,
                family.handle,
                keyBytes.baseAddress?.assumingMemoryBound(to: CChar.self),
                keyBytes.count
            )
        }
    }

    /// Deletes every key in `[start, end)`.
    public func deleteRange(from start: [UInt8], to end: [UInt8], in family: ColumnFamily) {
        families.insert(family)
        start.withUnsafeBytes { startBytes in
            end.withUnsafeBytes { endBytes in
                rocksdb_writebatch_delete_range_cf(
                    handle,
                    family.handle,
                    startBytes.baseAddress?.assumingMemoryBound(to: CChar.self),
                    startBytes.count,
                    endBytes.baseAddress?.assumingMemoryBound(to: CChar.self),
                    endBytes.count
                )
            }
        }
    }

    /// Removes every operation.
    public func clear() {
        rocksdb_writebatch_clear(handle)
        families = []
    }
}
