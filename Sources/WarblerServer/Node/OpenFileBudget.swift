import WarblerWire

/// How a node shares its open-file limit (`RLIMIT_NOFILE`) between client connections, RocksDB's table files
/// and everything else it opens.
///
/// Every client connection is a file descriptor, and so is every file RocksDB has open. Without a budget, a
/// flood of connections takes the descriptors RocksDB needs for its next write-ahead log, flush or compaction,
/// and the node can no longer write; and an accept that fails for want of a descriptor is retried at once, a
/// core spinning for as long as the flood lasts. So the node keeps a share for storage (``storageFiles``, which
/// bounds RocksDB's table cache) and one for the rest (``reservedFiles``: the write-ahead log and manifest,
/// flush and compaction outputs, peer connections, event loops, connections being refused), and admits at most
/// ``maxClientConnections`` clients, the remainder.
public struct OpenFileBudget: Sendable, Hashable {
    /// The lowest open-file limit a node starts with.
    public static let minimumLimit = 512

    /// The process's open-file limit the budget divides.
    public let limit: Int
    /// RocksDB's `max_open_files`: table files it keeps open at most (a quarter of the limit, at most 1,024).
    public let storageFiles: Int
    /// Descriptors kept for everything else the node opens (a quarter of the limit, at most 1,024).
    public let reservedFiles: Int
    /// Client connections (TCP and WebSocket together) the node admits at once.
    public let maxClientConnections: Int
    /// Inbound peer connections (TLS handshakes included) the node holds at once: a cluster needs one per
    /// member with a lower id, so this only bounds connections from elsewhere.
    public let maxPeerConnections: Int

    /// Divides `limit`; `maxClientConnections` (from `--max-connections`) must fit in what storage and the
    /// reserve leave, nil takes all of it.
    ///
    /// - Throws: ``WireError`` `invalidArgument` when the limit is below ``minimumLimit`` or cannot hold the
    ///   connections asked for, naming the limit needed.
    public init(limit: Int, maxClientConnections: Int? = nil) throws(WireError) {
        guard limit >= Self.minimumLimit else {
            throw WireError(
                .invalidArgument,
                "the open-file limit is \(limit); a node needs at least \(Self.minimumLimit) "
                    + "(raise it with `ulimit -n` or systemd's LimitNOFILE)"
            )
        }
        self.limit = limit
        storageFiles = min(1024, limit / 4)
        reservedFiles = min(1024, limit / 4)
        maxPeerConnections = min(128, reservedFiles / 4)
        let available = limit - storageFiles - reservedFiles
        if let asked = maxClientConnections {
            guard asked >= 1 else {
                throw WireError(.invalidArgument, "max-connections must be positive, got \(asked)")
            }
            guard asked <= available else {
                throw WireError(
                    .invalidArgument,
                    "max-connections \(asked) needs an open-file limit of at least "
                        + "\(asked + storageFiles + reservedFiles); this process may open \(limit) files "
                        + "(raise it with `ulimit -n` or systemd's LimitNOFILE, or ask for at most \(available))"
                )
            }
            self.maxClientConnections = asked
        } else {
            self.maxClientConnections = available
        }
    }
}
