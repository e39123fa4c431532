import NIOCore
import SwiftProtobuf

/// Splits a byte stream into frames: a 4-byte big-endian length, then that many bytes.
///
/// NIO Extras' `LengthFieldBasedFrameDecoder` accepts any length up to `Int32.max`, buffering it all first; a
/// chat node must refuse an oversize frame as soon as its header arrives, so this decoder checks the limit at
/// the header and fails with ``ErrorCode/frameTooLarge`` (fatal: the stream cannot be resynchronised).
public struct FrameDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = ByteBuffer

    /// The largest frame body accepted.
    public let maxFrameBytes: Int

    /// Creates a decoder enforcing `maxFrameBytes`.
    public init(maxFrameBytes: Int) { self.maxFrameBytes = maxFrameBytes }

    /// Returns the next complete frame body, or nil until more bytes arrive.
    public mutating func decode(buffer: inout ByteBuffer) throws -> ByteBuffer? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, endianness: .big, as: UInt32.self) else {
            return nil
        }
        guard Int(length) <= maxFrameBytes else {
            throw WireError(
                .frameTooLarge,
                "frame of \(length) bytes exceeds the limit of \(maxFrameBytes)",
                fatal: true
            )
        }
        guard buffer.readableBytes >= 4 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        return buffer.readSlice(length: Int(length))
    }

    /// At end of stream a partial frame is an error; nothing is an orderly close.
    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> ByteBuffer? {
        if let frame = try decode(buffer: &buffer) { return frame }
        if buffer.readableBytes > 0 {
            throw WireError(
                .malformedFrame,
                "connection closed inside a frame (\(buffer.readableBytes) bytes left)",
                fatal: true
            )
        }
        return nil
    }
}

/// Writes one frame: the 4-byte big-endian length, then the body.
public func writeFrame(_ body: ByteBuffer, into output: inout ByteBuffer) {
    output.writeInteger(UInt32(body.readableBytes), endianness: .big)
    var body = body
    output.writeBuffer(&body)
}

extension FrameCodec {
    /// A server frame ready for a TCP connection: its length prefix and protobuf bytes.
    public static func lengthPrefixed(_ frame: Warbler_V1_ServerFrame, allocator: ByteBufferAllocator) -> ByteBuffer {
        prefixed(frame, allocator: allocator)
    }

    /// A client frame ready for a TCP connection: its length prefix and protobuf bytes.
    public static func lengthPrefixed(_ frame: Warbler_V1_ClientFrame, allocator: ByteBufferAllocator) -> ByteBuffer {
        prefixed(frame, allocator: allocator)
    }

    /// The length and the bytes, serialized once straight into the buffer that is sent.
    private static func prefixed(_ message: some SwiftProtobuf.Message, allocator: ByteBufferAllocator) -> ByteBuffer {
        // Serializing a fully initialised proto3 message cannot fail.
        let bytes: [UInt8] = try! message.serializedBytes()
        var output = allocator.buffer(capacity: bytes.count + 4)
        output.writeInteger(UInt32(bytes.count), endianness: .big)
        output.writeBytes(bytes)
        return output
    }
}
