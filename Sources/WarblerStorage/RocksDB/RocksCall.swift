import CRocksDB

/// Runs a RocksDB C function that reports failure through a `char** errptr`, turning the status into a
/// ``StorageError`` at this one line and freeing RocksDB's string.
@inline(__always)
func rocksCall<T>(
    _ action: @autoclosure () -> String,
    file: StaticString = #fileID,
    line: UInt = #line,
    _ body: (UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> T
) throws(StorageError) -> T {
    var error: UnsafeMutablePointer<CChar>? = nil
    let result = body(&error)
    if let error {
        let status = String(cString: error)
        rocksdb_free(error)
        throw StorageError.rocksDB(status, while: action(), file: file, line: line)
    }
    return result
}

/// The C view of a byte buffer, as RocksDB's slices take it.
@inline(__always)
func cSlice(_ buffer: UnsafeRawBufferPointer) -> UnsafePointer<CChar>? {
    buffer.baseAddress?.assumingMemoryBound(to: CChar.self)
}

/// Calls `body` with a C slice of `bytes`, or with `(nil, 0)` when there are none (meaning "unbounded").
@inline(__always)
func withOptionalSlice<T>(_ bytes: [UInt8]?, _ body: (UnsafePointer<CChar>?, Int) -> T) -> T {
    guard let bytes else { return body(nil, 0) }
    return bytes.withUnsafeBytes { body(cSlice($0), $0.count) }
}

/// Copies `length` bytes at `pointer` into an array.
@inline(__always)
func bytes(_ pointer: UnsafePointer<CChar>?, _ length: Int) -> [UInt8] {
    guard let pointer, length > 0 else { return [] }
    return Array(UnsafeRawBufferPointer(start: pointer, count: length))
}
