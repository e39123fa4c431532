import CRocksDB

/// A consistent point-in-time view of a ``Database``: reads through it ignore later writes.
public final class ReadSnapshot: @unchecked Sendable {
    private let database: Database
    let handle: OpaquePointer
    let readOptions: OpaquePointer

    init(database: Database) {
        self.database = database
        handle = rocksdb_create_snapshot(database.handle)!
        readOptions = rocksdb_readoptions_create()!
        rocksdb_readoptions_set_snapshot(readOptions, handle)
    }

    deinit {
        rocksdb_readoptions_destroy(readOptions)
        rocksdb_release_snapshot(database.handle, handle)
    }
}
