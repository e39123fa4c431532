import CRocksDB

extension Database {
    /// How SST files are compressed.
    public enum Compression: Sendable, Hashable {
        /// No compression (for tests that inspect raw files).
        case none
        /// LZ4 on every level: fast, and what Warbler ships with.
        case lz4
    }

    /// How a database is opened. Defaults suit one Warbler node.
    public struct Options: Sendable, Hashable {
        /// Create the database (and missing column families) if absent.
        public var createIfMissing = true
        /// Column families to open besides `default`; families already on disk are always opened too.
        public var columnFamilies: [String] = []
        /// SST compression.
        public var compression: Compression = .lz4
        /// Bytes buffered in memory per column family before a flush to an SST file.
        public var writeBufferSize = 64 << 20
        /// Write-ahead log kept on disk at most, in bytes: beyond it RocksDB flushes the column families that
        /// hold the oldest log file, so that it can be deleted. A log file lives until every family with data
        /// in it has flushed; without a bound a quiet family (a few writes, never a full memtable) keeps every
        /// later file too — RocksDB's own bound is four times the memtables' total, several GiB here, all of
        /// it replayed by the next start.
        public var maxTotalWALSize = 256 << 20
        /// Table (SST) files RocksDB keeps open at most, evicting the least recently used beyond it; -1 keeps
        /// every one open (RocksDB's default), which lets a large database take any number of file descriptors.
        public var maxOpenFiles = -1
        /// Background threads for flushes and compactions.
        public var backgroundThreads = 2
        /// Verify checksums aggressively and refuse to open a database that looks damaged.
        public var paranoidChecks = true

        /// Creates default options.
        public init() {}

        /// Checks every field; throws naming the first that is wrong.
        public func validate() throws(StorageError) {
            if writeBufferSize < 1 << 16 {
                throw StorageError(.invalidArgument, "writeBufferSize must be at least 64 KiB, got \(writeBufferSize)")
            }
            if maxTotalWALSize < writeBufferSize {
                throw StorageError(
                    .invalidArgument,
                    "maxTotalWALSize (\(maxTotalWALSize)) must be at least writeBufferSize (\(writeBufferSize))"
                )
            }
            if maxOpenFiles != -1 && maxOpenFiles < 16 {
                throw StorageError(.invalidArgument, "maxOpenFiles must be -1 or at least 16, got \(maxOpenFiles)")
            }
            if backgroundThreads < 1 {
                throw StorageError(.invalidArgument, "backgroundThreads must be positive, got \(backgroundThreads)")
            }
            for name in columnFamilies where name.isEmpty || name.utf8.count > 200 {
                throw StorageError(.invalidArgument, "column family name '\(name)' must have 1 to 200 bytes")
            }
            if Set(columnFamilies).count != columnFamilies.count {
                throw StorageError(.invalidArgument, "column family names must be unique")
            }
        }

        /// A fresh C options object; the caller destroys it.
        func makeCOptions() -> OpaquePointer {
            let options = rocksdb_options_create()!
            rocksdb_options_set_create_if_missing(options, createIfMissing ? 1 : 0)
            rocksdb_options_set_create_missing_column_families(options, 1)
            rocksdb_options_increase_parallelism(options, Int32(backgroundThreads))
            rocksdb_options_set_write_buffer_size(options, writeBufferSize)
            rocksdb_options_set_max_write_buffer_number(options, 4)
            rocksdb_options_set_max_total_wal_size(options, UInt64(maxTotalWALSize))
            rocksdb_options_set_paranoid_checks(options, paranoidChecks ? 1 : 0)
            rocksdb_options_set_max_open_files(options, Int32(maxOpenFiles))
            // Bloom filters over whole keys, in SST files (10 bits a key) and in memtables: most point reads on
            // the hot path miss (a message's dedup key, a new conversation), and a miss then costs no search of
            // every memtable and level.
            let table = rocksdb_block_based_options_create()!
            rocksdb_block_based_options_set_filter_policy(table, rocksdb_filterpolicy_create_bloom_full(10))
            rocksdb_options_set_block_based_table_factory(options, table)
            rocksdb_block_based_options_destroy(table)
            rocksdb_options_set_memtable_prefix_bloom_size_ratio(options, 0.02)
            rocksdb_options_set_memtable_whole_key_filtering(options, 1)
            let kind: Int32
            switch compression {
            case .none: kind = Int32(rocksdb_no_compression)
            case .lz4: kind = Int32(rocksdb_lz4_compression)
            }
            rocksdb_options_set_compression(options, kind)
            rocksdb_options_set_bottommost_compression(options, kind)
            return options
        }
    }
}
