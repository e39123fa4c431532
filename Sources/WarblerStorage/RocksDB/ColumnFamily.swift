import CRocksDB

/// A column family of one open ``Database``: a separately ordered key space with its own files.
///
/// Obtain one from ``Database/columnFamily(_:)``; it is valid as long as its database is, and only with it.
public struct ColumnFamily: @unchecked Sendable, Hashable, CustomStringConvertible {
    /// The family's name.
    public let name: String
    let handle: OpaquePointer
    let owner: ObjectIdentifier

    public var description: String { name }

    public static func == (lhs: ColumnFamily, rhs: ColumnFamily) -> Bool {
        lhs.handle == rhs.handle && lhs.owner == rhs.owner
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(name)
        hasher.combine(owner)
    }
}
