/// An error from the storage layer, with a stable code, a message, the underlying cause and where it was raised.
public struct StorageError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A stable identifier for a kind of storage failure.
    public struct Code: Sendable, Hashable, RawRepresentable, CustomStringConvertible {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// The disk or file system failed (including "no space left").
        public static let io = Code(rawValue: "storage.io")
        /// Stored data failed a checksum or could not be decoded.
        public static let corruption = Code(rawValue: "storage.corruption")
        /// The call was malformed (for example an unknown column family).
        public static let invalidArgument = Code(rawValue: "storage.invalid_argument")
        /// Another process (or another `Database` in this one) holds the database's lock.
        public static let locked = Code(rawValue: "storage.locked")
        /// The database is not there and was not to be created.
        public static let notFound = Code(rawValue: "storage.not_found")
        /// Any other RocksDB failure.
        public static let failed = Code(rawValue: "storage.failed")
    }

    public var code: Code
    public var message: String
    /// The text RocksDB (or another library) gave, when there is one.
    public var cause: String?
    public var location: String

    public init(_ code: Code, _ message: String, cause: String? = nil, file: StaticString = #fileID, line: UInt = #line)
    {
        self.code = code
        self.message = message
        self.cause = cause
        self.location = "\(file):\(line)"
    }

    public var description: String {
        var text = "\(code): \(message)"
        if let cause { text += " (\(cause))" }
        return text
    }

    /// Classifies a RocksDB status string ("IO error: ...", "Corruption: ...").
    static func rocksDB(
        _ status: String,
        while action: String,
        file: StaticString = #fileID,
        line: UInt = #line
    )
        -> StorageError
    {
        let code: Code
        if status.contains("lock") && (status.contains("Resource temporarily unavailable") || status.contains("LOCK")) {
            code = .locked
        } else if status.hasPrefix("IO error") {
            code = status.contains("No such file") ? .notFound : .io
        } else if status.hasPrefix("Corruption") {
            code = .corruption
        } else if status.hasPrefix("Invalid argument") {
            code = status.contains("does not exist") ? .notFound : .invalidArgument
        } else {
            code = .failed
        }
        return StorageError(code, "RocksDB failed while \(action)", cause: status, file: file, line: line)
    }
}
