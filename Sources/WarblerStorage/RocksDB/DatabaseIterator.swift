import CRocksDB

/// A cursor over one column family, in key order. Not thread-safe; it keeps its database open.
public final class DatabaseIterator {
    private let database: Database
    private let handle: OpaquePointer
    private let readOptions: OpaquePointer
    /// RocksDB keeps a pointer to the upper bound: the bytes must live as long as the iterator.
    private let upperBound: UnsafeMutableBufferPointer<CChar>?
    private let snapshot: ReadSnapshot?

    init(database: Database, family: ColumnFamily, upperBound: [UInt8]?, snapshot: ReadSnapshot?) {
        self.database = database
        self.snapshot = snapshot
        readOptions = rocksdb_readoptions_create()!
        if let snapshot { rocksdb_readoptions_set_snapshot(readOptions, snapshot.handle) }
        if let upperBound {
            let buffer = UnsafeMutableBufferPointer<CChar>.allocate(capacity: max(upperBound.count, 1))
            for (position, byte) in upperBound.enumerated() { buffer[position] = CChar(bitPattern: byte) }
            rocksdb_readoptions_set_iterate_upper_bound(readOptions, buffer.baseAddress, upperBound.count)
            self.upperBound = buffer
        } else {
            self.upperBound = nil
        }
        handle = rocksdb_create_iterator_cf(database.handle, readOptions, family.handle)!
    }

    deinit {
        rocksdb_iter_destroy(handle)
        rocksdb_readoptions_destroy(readOptions)
        upperBound?.deallocate()
    }

    /// True while the cursor is on an entry.
    public var isValid: Bool { rocksdb_iter_valid(handle) != 0 }

    /// Moves to the first key at or after `key`.
    public func seek(to key: [UInt8]) {
        key.withUnsafeBytes { rocksdb_iter_seek(handle, $0.baseAddress?.assumingMemoryBound(to: CChar.self), $0.count) }
    }

    /// Moves to the last key at or before `key`.
    public func seekForPrevious(_ key: [UInt8]) {
        key.withUnsafeBytes {
            rocksdb_iter_seek_for_prev(handle, $0.baseAddress?.assumingMemoryBound(to: CChar.self), $0.count)
        }
    }

    public func seekToFirst() { rocksdb_iter_seek_to_first(handle) }
    public func seekToLast() { rocksdb_iter_seek_to_last(handle) }
    public func next() { rocksdb_iter_next(handle) }
    public func previous() { rocksdb_iter_prev(handle) }

    /// The current key; the cursor MUST be valid.
    public var key: [UInt8] {
        precondition(isValid, "storage: key of an invalid iterator")
        var length = 0
        let pointer = rocksdb_iter_key(handle, &length)
        return bytes(pointer, length)
    }

    /// The current value; the cursor MUST be valid.
    public var value: [UInt8] {
        precondition(isValid, "storage: value of an invalid iterator")
        var length = 0
        let pointer = rocksdb_iter_value(handle, &length)
        return bytes(pointer, length)
    }

    /// Throws if iteration stopped because of an error rather than the end of the data.
    public func checkError() throws(StorageError) {
        try rocksCall("iterating") { error in rocksdb_iter_get_error(handle, error) }
    }
}
