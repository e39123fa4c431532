/// Keys of the `raft` column family. Integers are big-endian so that keys sort numerically; every record of a
/// group shares the prefix `kind | group`. See `docs/storage.md`.
enum RaftLogKeys {
    static let entryTag: UInt8 = 0x01
    static let hardStateTag: UInt8 = 0x02
    static let snapshotTag: UInt8 = 0x03
    static let confStateTag: UInt8 = 0x04

    /// `0x01 | group u32 | index u64`
    static func entry(group: UInt32, index: UInt64) -> [UInt8] {
        var key: [UInt8] = []
        key.reserveCapacity(13)
        key.append(entryTag)
        appendBigEndian(group, to: &key)
        appendBigEndian(index, to: &key)
        return key
    }

    /// `0x02 | group u32`
    static func hardState(group: UInt32) -> [UInt8] {
        var key: [UInt8] = [hardStateTag]
        appendBigEndian(group, to: &key)
        return key
    }

    /// `0x03 | group u32`
    static func snapshot(group: UInt32) -> [UInt8] {
        var key: [UInt8] = [snapshotTag]
        appendBigEndian(group, to: &key)
        return key
    }

    /// `0x04 | group u32`: the membership as of the applied index (written with the applied state).
    static func confState(group: UInt32) -> [UInt8] {
        var key: [UInt8] = [confStateTag]
        appendBigEndian(group, to: &key)
        return key
    }

    /// The index encoded in an entry key.
    static func index(ofEntryKey key: [UInt8]) -> UInt64? {
        guard key.count == 13, key[0] == entryTag else { return nil }
        var value: UInt64 = 0
        for byte in key[5..<13] { value = value << 8 | UInt64(byte) }
        return value
    }
}

/// Appends `value` to `bytes` big-endian, as every Warbler key encodes integers.
@inlinable
public func appendBigEndian<T: FixedWidthInteger>(_ value: T, to bytes: inout [UInt8]) {
    for shift in stride(from: T.bitWidth - 8, through: 0, by: -8) {
        bytes.append(UInt8(truncatingIfNeeded: value >> T(shift)))
    }
}
