import Crypto
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Snapshot data kept in files beside the database rather than in it: `<directory>/<group>-<index>.snap`.
///
/// A compaction snapshot of a large partition is tens of megabytes. Written through RocksDB it went through the
/// write-ahead log and a memtable in one write, and every other write of the node queued behind it (0.16 s for
/// 47 MB). A file is written and synced off the scheduler; the log then stores only a small reference (size and
/// SHA-256, key `0x05 | group`), and a file that no reference names is deleted when its group opens.
public struct SnapshotFiles: Sendable {
    /// Where the files live (created on first use).
    public let directory: String

    /// What the log stores about a file: enough to find it and to know it is intact.
    public struct Reference: Sendable, Equatable {
        public var index: UInt64
        public var size: UInt64
        public var digest: [UInt8]
    }

    public init(directory: String) { self.directory = directory }

    /// The files of the database at `databasePath`: `<databasePath>-snapshots`.
    public init(besideDatabaseAt databasePath: String) { self.init(directory: databasePath + "-snapshots") }

    func path(group: UInt32, index: UInt64) -> String { "\(directory)/\(group)-\(index).snap" }

    /// Writes `data` as the snapshot of `group` at `index`, durably (file and directory synced), and returns its
    /// reference. Safe off the scheduler: nothing refers to the file until the log stores the reference.
    public func write(_ data: [UInt8], group: UInt32, index: UInt64) throws(StorageError) -> Reference {
        let final = path(group: group, index: index)
        let temporary = final + ".tmp"
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            guard FileManager.default.createFile(atPath: temporary, contents: nil) else {
                throw StorageError(.failed, "cannot create \(temporary)")
            }
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: temporary))
            do {
                try handle.write(contentsOf: data)
                try handle.synchronize()
                try handle.close()
            } catch {
                try? handle.close()
                throw error
            }
            if FileManager.default.fileExists(atPath: final) { try FileManager.default.removeItem(atPath: final) }
            try FileManager.default.moveItem(atPath: temporary, toPath: final)
            try syncDirectory()
        } catch let error as StorageError {
            throw error
        } catch {
            try? FileManager.default.removeItem(atPath: temporary)
            throw StorageError(.failed, "cannot write snapshot file \(final)", cause: "\(error)")
        }
        return Reference(index: index, size: UInt64(data.count), digest: Array(SHA256.hash(data: data)))
    }

    /// The data `reference` names, checked against its size and digest.
    ///
    /// - Throws: ``StorageError/Code/corruption`` when the file is missing, shorter or longer, or altered.
    public func read(_ reference: Reference, group: UInt32) throws(StorageError) -> [UInt8] {
        let file = path(group: group, index: reference.index)
        guard let contents = FileManager.default.contents(atPath: file) else {
            throw StorageError(.corruption, "snapshot file \(file) of group \(group) is missing")
        }
        let data = [UInt8](contents)
        guard UInt64(data.count) == reference.size, Array(SHA256.hash(data: data)) == reference.digest else {
            throw StorageError(.corruption, "snapshot file \(file) of group \(group) does not match its reference")
        }
        return data
    }

    /// Deletes every file but those `referenced` names (group → index of its snapshot file): leftovers of a
    /// compaction that stopped before its reference was stored, data a leader's snapshot replaced, files of
    /// groups this node left. For when the node starts, before any compaction runs.
    public func removeFiles(keeping referenced: [UInt32: UInt64]) {
        for (group, index, name) in files() where referenced[group] != index {
            try? FileManager.default.removeItem(atPath: "\(directory)/\(name)")
        }
    }

    /// Deletes the files of `group` older than `index` (replaced by the snapshot at `index`; all of them with
    /// `.max`, when the node left the group). Files of later snapshots stay: one may be on its way to the log.
    public func removeFiles(of group: UInt32, before index: UInt64) {
        for (fileGroup, fileIndex, name) in files() where fileGroup == group && fileIndex < index {
            try? FileManager.default.removeItem(atPath: "\(directory)/\(name)")
        }
    }

    /// Deletes the file of `group` at `index` (a compaction that did not happen).
    public func removeFile(of group: UInt32, at index: UInt64) {
        try? FileManager.default.removeItem(atPath: path(group: group, index: index))
    }

    /// `(group, index, file name)` of every snapshot file in the directory; an unfinished temporary file counts
    /// as index `.max` (never referenced, so removed when the node starts).
    private func files() -> [(UInt32, UInt64, String)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.compactMap { name in
            let stem = name.hasSuffix(".snap.tmp") ? name.dropLast(9) : name.hasSuffix(".snap") ? name.dropLast(5) : nil
            guard let parts = stem?.split(separator: "-"), parts.count == 2, let group = UInt32(parts[0]),
                let index = UInt64(parts[1])
            else { return nil }
            return (group, name.hasSuffix(".tmp") ? .max : index, name)
        }
    }

    private func syncDirectory() throws(StorageError) {
        let descriptor = open(directory, O_RDONLY)
        guard descriptor >= 0 else { throw StorageError(.failed, "cannot open \(directory) to sync it") }
        defer { close(descriptor) }
        guard fsync(descriptor) == 0 else { throw StorageError(.failed, "cannot sync \(directory)") }
    }
}

extension SnapshotFiles.Reference {
    /// `index u64 | size u64 | SHA-256 (32 bytes)`.
    var encoded: [UInt8] {
        var bytes: [UInt8] = []
        appendBigEndian(index, to: &bytes)
        appendBigEndian(size, to: &bytes)
        return bytes + digest
    }

    init?(decoding bytes: [UInt8]) {
        guard bytes.count == 48 else { return nil }
        index = bytes[0..<8].reduce(0) { $0 << 8 | UInt64($1) }
        size = bytes[8..<16].reduce(0) { $0 << 8 | UInt64($1) }
        digest = Array(bytes[16...])
    }
}
