import NIOCore
import SwiftProtobuf

/// A `ByteBuffer`'s readable bytes as SwiftProtobuf's contiguous bytes, so that a message decodes straight from
/// the buffer a frame arrived in, without copying its body into an `Array` first.
public struct ByteBufferBytes: SwiftProtobufContiguousBytes {
    /// The bytes: the buffer's readable ones.
    public var buffer: ByteBuffer

    /// Wraps `buffer` (no copy).
    public init(_ buffer: ByteBuffer) { self.buffer = buffer }

    /// `count` copies of `byte` in a new buffer.
    public init(repeating byte: UInt8, count: Int) {
        buffer = ByteBufferAllocator().buffer(repeating: byte, count: count)
    }

    /// The bytes of `sequence` in a new buffer.
    public init<S: Sequence>(_ sequence: S) where S.Element == UInt8 {
        buffer = ByteBufferAllocator().buffer(bytes: sequence)
    }

    /// The number of readable bytes.
    public var count: Int { buffer.readableBytes }

    /// Calls `body` with the readable bytes.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try buffer.withUnsafeReadableBytes(body)
    }

    /// Calls `body` with the readable bytes, which it may change (the buffer is copied first if shared).
    public mutating func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        try buffer.withUnsafeMutableReadableBytes(body)
    }
}
