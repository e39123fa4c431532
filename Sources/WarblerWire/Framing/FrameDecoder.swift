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

/// A connection's byte stream split into frame bodies by ``FrameDecoder`` (run through NIO's
/// `NIOSingleStepByteToMessageProcessor`), for a channel handler that takes the bodies itself instead of
/// putting a `ByteToMessageHandler` of its own in front of it (one pipeline step less per read).
///
/// The first error — a framing error, or one thrown by the handler's `body` for a frame — ends the stream:
/// nothing after it is handed on, not even whole frames left at the end.
public final class FrameSplitter {
    private let frames: NIOSingleStepByteToMessageProcessor<FrameDecoder>
    private var failed = false

    /// Splits frames of at most `maxFrameBytes`.
    public init(maxFrameBytes: Int) {
        frames = NIOSingleStepByteToMessageProcessor(FrameDecoder(maxFrameBytes: maxFrameBytes))
    }

    /// Adds `bytes` to what arrived before and calls `body` with each whole frame body, in order; rethrows the
    /// first error.
    public func split(_ bytes: ByteBuffer, _ body: (ByteBuffer) throws -> Void) throws {
        try untilFailure { try frames.process(buffer: bytes, body) }
    }

    /// At the end of the stream: calls `body` with any whole frame body left, then throws
    /// ``ErrorCode/malformedFrame`` if a partial one remains.
    public func finish(_ body: (ByteBuffer) throws -> Void) throws {
        try untilFailure { try frames.finishProcessing(seenEOF: true, body) }
    }

    /// Runs `work` unless an earlier call failed; an error it throws ends the stream.
    private func untilFailure(_ work: () throws -> Void) throws {
        guard !failed else { return }
        do {
            try work()
        } catch {
            failed = true
            throw error
        }
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
        lengthPrefixed(try! message.serializedBytes(), allocator: allocator)
    }

    /// An encoded message ready for a connection: its 4-byte big-endian length, then `bytes`.
    public static func lengthPrefixed(_ bytes: [UInt8], allocator: ByteBufferAllocator) -> ByteBuffer {
        var output = allocator.buffer(capacity: bytes.count + 4)
        writeLengthPrefixed(bytes, into: &output)
        return output
    }

    /// Appends an encoded message to `buffer` as ``lengthPrefixed(_:allocator:)`` frames it (several frames
    /// written as one).
    public static func writeLengthPrefixed(_ bytes: [UInt8], into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt32(bytes.count), endianness: .big)
        buffer.writeBytes(bytes)
    }
}
