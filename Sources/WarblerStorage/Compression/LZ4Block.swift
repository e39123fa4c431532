import CLZ4

/// LZ4 block compression for self-contained chunks (archive and stream chunks), over Debian's liblz4.
///
/// The encoded form is the original length as 4 bytes big-endian, then one LZ4 block. Decoding checks every
/// bound: damaged input gives ``StorageError/Code/corruption``, never a crash.
public enum LZ4Block {
    /// The largest chunk accepted, well under LZ4's own limit.
    public static let maxChunkSize = 64 << 20

    /// Compresses `input` (at most ``maxChunkSize`` bytes).
    public static func compress(_ input: [UInt8]) throws(StorageError) -> [UInt8] {
        guard input.count <= maxChunkSize else {
            throw StorageError(.invalidArgument, "chunk of \(input.count) bytes exceeds \(maxChunkSize)")
        }
        let bound = Int(LZ4_compressBound(Int32(input.count)))
        var output = [UInt8](repeating: 0, count: 4 + bound)
        let length = UInt32(input.count)
        output[0] = UInt8(truncatingIfNeeded: length >> 24)
        output[1] = UInt8(truncatingIfNeeded: length >> 16)
        output[2] = UInt8(truncatingIfNeeded: length >> 8)
        output[3] = UInt8(truncatingIfNeeded: length)
        let written = input.withUnsafeBytes { source in
            output.withUnsafeMutableBytes { destination in
                LZ4_compress_default(
                    source.baseAddress?.assumingMemoryBound(to: CChar.self),
                    destination.baseAddress!.advanced(by: 4).assumingMemoryBound(to: CChar.self),
                    Int32(source.count),
                    Int32(bound)
                )
            }
        }
        guard written > 0 || input.isEmpty else { throw StorageError(.failed, "LZ4 could not compress the chunk") }
        output.removeLast(bound - Int(written))
        return output
    }

    /// Decompresses what ``compress(_:)`` produced.
    public static func decompress(_ input: [UInt8]) throws(StorageError) -> [UInt8] {
        guard input.count >= 4 else {
            throw StorageError(.corruption, "LZ4 chunk of \(input.count) bytes has no header")
        }
        let length = Int(input[0]) << 24 | Int(input[1]) << 16 | Int(input[2]) << 8 | Int(input[3])
        guard length <= maxChunkSize else {
            throw StorageError(.corruption, "LZ4 chunk claims \(length) bytes, more than \(maxChunkSize)")
        }
        if length == 0 {
            guard input.count <= 5 else { throw StorageError(.corruption, "empty LZ4 chunk carries data") }
            return []
        }
        var output = [UInt8](repeating: 0, count: length)
        let produced = input.withUnsafeBytes { source in
            output.withUnsafeMutableBytes { destination in
                LZ4_decompress_safe(
                    source.baseAddress!.advanced(by: 4).assumingMemoryBound(to: CChar.self),
                    destination.baseAddress!.assumingMemoryBound(to: CChar.self),
                    Int32(source.count - 4),
                    Int32(length)
                )
            }
        }
        guard produced == Int32(length) else {
            throw StorageError(.corruption, "LZ4 chunk does not decode to its declared \(length) bytes")
        }
        return output
    }
}
