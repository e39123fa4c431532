import CRocksDB

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An open RocksDB database: the one store of a Warbler node.
///
/// RocksDB is safe for concurrent use, so a `Database` may be shared between tasks. Every call blocks on disk:
/// callers MUST NOT make them on an event loop (run them on a thread pool). The database closes when the last
/// reference to it (including from iterators and snapshots) goes away.
public final class Database: @unchecked Sendable {
    /// The directory holding the database.
    public let path: String
    let handle: OpaquePointer
    private let cOptions: OpaquePointer
    private let syncWrites: OpaquePointer
    private let bufferedWrites: OpaquePointer
    private let defaultReads: OpaquePointer
    /// Written once, in `init`.
    private var families: [String: ColumnFamily] = [:]

    /// Opens (or creates) the database at `path` with the given column families.
    ///
    /// - Throws: ``StorageError`` with ``StorageError/Code/locked`` when another process has it open,
    ///   ``StorageError/Code/notFound`` when it is absent and `createIfMissing` is false, or
    ///   ``StorageError/Code/corruption`` when its files are damaged.
    public init(path: String, options: Options = Options()) throws(StorageError) {
        try options.validate()
        // RocksDB would create the directory for its info log before failing: check first, so that a refused
        // open leaves nothing behind.
        if !options.createIfMissing && access(path + "/CURRENT", F_OK) != 0 {
            throw StorageError(.notFound, "no database at \(path)")
        }
        self.path = path
        let cOptions = options.makeCOptions()
        // Families already on disk must all be opened; add the requested ones.
        var names = ["default"]
        var count = 0
        var error: UnsafeMutablePointer<CChar>? = nil
        if let existing = rocksdb_list_column_families(cOptions, path, &count, &error) {
            for position in 0..<count {
                if let name = existing[position] {
                    let text = String(cString: name)
                    if !names.contains(text) { names.append(text) }
                }
            }
            rocksdb_list_column_families_destroy(existing, count)
        }
        if let error { rocksdb_free(error) }  // No database yet: nothing to list.
        for name in options.columnFamilies where !names.contains(name) { names.append(name) }

        var handles = [OpaquePointer?](repeating: nil, count: names.count)
        let familyOptions = [OpaquePointer?](repeating: cOptions, count: names.count)
        let cNames = names.map { strdup($0) }
        defer { for name in cNames { free(name) } }
        let opened: OpaquePointer?
        do {
            opened = try rocksCall("opening \(path)") { error in
                cNames.map { UnsafePointer($0) }.withUnsafeBufferPointer { namePointers in
                    familyOptions.withUnsafeBufferPointer { optionPointers in
                        handles.withUnsafeMutableBufferPointer { handlePointers in
                            rocksdb_open_column_families(
                                cOptions,
                                path,
                                Int32(names.count),
                                namePointers.baseAddress,
                                optionPointers.baseAddress,
                                handlePointers.baseAddress,
                                error
                            )
                        }
                    }
                }
            }
        } catch {
            rocksdb_options_destroy(cOptions)
            throw error
        }
        guard let opened else {
            rocksdb_options_destroy(cOptions)
            throw StorageError(.failed, "RocksDB returned no database for \(path)")
        }
        handle = opened
        self.cOptions = cOptions
        syncWrites = rocksdb_writeoptions_create()!
        rocksdb_writeoptions_set_sync(syncWrites, 1)
        bufferedWrites = rocksdb_writeoptions_create()!
        defaultReads = rocksdb_readoptions_create()!
        for (position, name) in names.enumerated() {
            families[name] = ColumnFamily(name: name, handle: handles[position]!, owner: ObjectIdentifier(self))
        }
    }

    deinit {
        for family in families.values { rocksdb_column_family_handle_destroy(family.handle) }
        rocksdb_close(handle)
        rocksdb_writeoptions_destroy(syncWrites)
        rocksdb_writeoptions_destroy(bufferedWrites)
        rocksdb_readoptions_destroy(defaultReads)
        rocksdb_options_destroy(cOptions)
    }

    /// The names of every open column family, sorted.
    public var columnFamilyNames: [String] { families.keys.sorted() }

    /// The column family called `name`.
    public func columnFamily(_ name: String) throws(StorageError) -> ColumnFamily {
        guard let family = families[name] else {
            throw StorageError(.invalidArgument, "no column family '\(name)' in \(path)")
        }
        return family
    }

    /// The `default` column family.
    public var defaultFamily: ColumnFamily { families["default"]! }

    func check(_ family: ColumnFamily) {
        precondition(family.owner == ObjectIdentifier(self), "column family \(family.name) belongs to another database")
    }

    func writeOptions(sync: Bool) -> OpaquePointer { sync ? syncWrites : bufferedWrites }

    /// Turns RocksDB's performance counters off for the calling thread. They are on by default, per thread, and
    /// the memtable's key comparator bumps a thread-local counter on every comparison; Warbler never reads them.
    /// For the threads that do most of the writing (the Raft scheduler and the apply queue).
    public static func disablePerformanceCountersOnThisThread() {
        rocksdb_set_perf_level(Int32(rocksdb_disable))
    }

    /// The calling thread's count of key comparisons (a RocksDB performance counter; for tests).
    static func keyComparisonsOnThisThread() -> UInt64 {
        let context = rocksdb_perfcontext_create()!
        defer { rocksdb_perfcontext_destroy(context) }
        return rocksdb_perfcontext_metric(context, Int32(rocksdb_user_key_comparison_count))
    }

    // MARK: - Point operations

    /// Reads the value stored under `key`, or nil.
    public func get(
        _ key: [UInt8],
        in family: ColumnFamily,
        snapshot: ReadSnapshot? = nil
    ) throws(StorageError)
        -> [UInt8]?
    {
        check(family)
        let readOptions = snapshot?.readOptions ?? defaultReads
        let pinned = try rocksCall("reading from \(family.name)") { error in
            key.withUnsafeBytes { keyBytes in
                rocksdb_get_pinned_cf(handle, readOptions, family.handle, cSlice(keyBytes), keyBytes.count, error)
            }
        }
        guard let pinned else { return nil }
        defer { rocksdb_pinnableslice_destroy(pinned) }
        var valueLength = 0
        let value = rocksdb_pinnableslice_value(pinned, &valueLength)
        return bytes(value, valueLength)
    }

    /// Stores `value` under `key`. With `sync`, returns only once the write is on disk (fsync'd).
    public func put(_ key: [UInt8], _ value: [UInt8], in family: ColumnFamily, sync: Bool) throws(StorageError) {
        let batch = WriteBatch()
        batch.put(key, value, in: family)
        try write(batch, sync: sync)
    }

    /// Deletes `key`. With `sync`, returns only once the deletion is on disk.
    public func delete(_ key: [UInt8], in family: ColumnFamily, sync: Bool) throws(StorageError) {
        let batch = WriteBatch()
        batch.delete(key, in: family)
        try write(batch, sync: sync)
    }

    /// Applies every operation of `batch` atomically. With `sync`, returns only once it is on disk (fsync'd):
    /// anything that acknowledges a client MUST be written with `sync: true`.
    public func write(_ batch: WriteBatch, sync: Bool) throws(StorageError) {
        for family in batch.families { check(family) }
        try rocksCall("writing a batch of \(batch.count) operations") { error in
            rocksdb_write(handle, writeOptions(sync: sync), batch.handle, error)
        }
    }

    // MARK: - Range operations

    /// An iterator over `family`, optionally limited to keys below `upperBound` and reading at `snapshot`.
    public func makeIterator(
        in family: ColumnFamily,
        upperBound: [UInt8]? = nil,
        snapshot: ReadSnapshot? = nil
    ) -> DatabaseIterator {
        check(family)
        return DatabaseIterator(database: self, family: family, upperBound: upperBound, snapshot: snapshot)
    }

    /// Every key/value pair with `start <= key < end`, in key order, at most `limit` of them.
    public func scan(
        in family: ColumnFamily,
        from start: [UInt8],
        to end: [UInt8]? = nil,
        limit: Int = .max,
        snapshot: ReadSnapshot? = nil
    ) throws(StorageError) -> [(key: [UInt8], value: [UInt8])] {
        let iterator = makeIterator(in: family, upperBound: end, snapshot: snapshot)
        var result: [(key: [UInt8], value: [UInt8])] = []
        iterator.seek(to: start)
        while iterator.isValid && result.count < limit {
            result.append((iterator.key, iterator.value))
            iterator.next()
        }
        try iterator.checkError()
        return result
    }

    /// A consistent point-in-time view for reads.
    public func makeSnapshot() -> ReadSnapshot { ReadSnapshot(database: self) }

    // MARK: - Maintenance

    /// Writes memtables of `family` (or of every family) to SST files and waits.
    public func flush(_ family: ColumnFamily? = nil) throws(StorageError) {
        let options = rocksdb_flushoptions_create()!
        defer { rocksdb_flushoptions_destroy(options) }
        rocksdb_flushoptions_set_wait(options, 1)
        for target in family.map({ [$0] }) ?? Array(families.values) {
            check(target)
            try rocksCall("flushing \(target.name)") { error in rocksdb_flush_cf(handle, options, target.handle, error)
            }
        }
    }

    /// Compacts `family` in `[start, end)` (whole family when nil), so deleted data leaves the disk.
    public func compactRange(in family: ColumnFamily, from start: [UInt8]? = nil, to end: [UInt8]? = nil) {
        check(family)
        withOptionalSlice(start) { startPointer, startLength in
            withOptionalSlice(end) { endPointer, endLength in
                rocksdb_compact_range_cf(handle, family.handle, startPointer, startLength, endPointer, endLength)
            }
        }
    }

    /// A RocksDB property of `family`, such as `rocksdb.estimate-num-keys`.
    public func property(_ name: String, in family: ColumnFamily) -> String? {
        check(family)
        guard let value = rocksdb_property_value_cf(handle, family.handle, name) else { return nil }
        defer { rocksdb_free(value) }
        return String(cString: value)
    }

    /// Creates a consistent, openable copy of the database at `directory` (which must not exist), using hard
    /// links where possible.
    public func checkpoint(to directory: String) throws(StorageError) {
        let checkpoint = try rocksCall("preparing a checkpoint") { error in
            rocksdb_checkpoint_object_create(handle, error)
        }
        guard let checkpoint else { throw StorageError(.failed, "RocksDB returned no checkpoint object") }
        defer { rocksdb_checkpoint_object_destroy(checkpoint) }
        try rocksCall("writing a checkpoint to \(directory)") { error in
            rocksdb_checkpoint_create(checkpoint, directory, 0, error)
        }
    }
}
