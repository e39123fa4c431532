import NIOCore
import SwiftProtobuf

/// Turns frame bodies into protocol messages and back, in binary protobuf or the protobuf JSON mapping.
public enum FrameCodec {
    /// Decodes a client frame from a binary frame body.
    ///
    /// - Throws: ``ErrorCode/malformedFrame`` when the bytes are not a `ClientFrame`,
    ///   ``ErrorCode/unknownRequest`` when it carries no known request, ``ErrorCode/missingRequestID``.
    public static func decodeClientFrame(_ body: ByteBuffer) throws(WireError) -> Warbler_V1_ClientFrame {
        let frame: Warbler_V1_ClientFrame
        do {
            frame = try Warbler_V1_ClientFrame(serializedBytes: ByteBufferBytes(body))
        } catch {
            throw WireError(.malformedFrame, "frame is not a valid ClientFrame: \(error)")
        }
        return try validated(frame)
    }

    /// Decodes a client frame from a WebSocket text message (protobuf JSON mapping).
    public static func decodeClientFrame(json: String) throws(WireError) -> Warbler_V1_ClientFrame {
        let frame: Warbler_V1_ClientFrame
        do {
            var options = JSONDecodingOptions()
            options.ignoreUnknownFields = false
            frame = try Warbler_V1_ClientFrame(jsonString: json, options: options)
        } catch {
            throw WireError(.malformedFrame, "text frame is not ClientFrame JSON: \(error)")
        }
        return try validated(frame)
    }

    private static func validated(_ frame: Warbler_V1_ClientFrame) throws(WireError) -> Warbler_V1_ClientFrame {
        guard frame.body != nil else {
            var error = WireError(.unknownRequest, "frame \(frame.requestID) carries no request this node knows")
            error.requestID = frame.requestID
            throw error
        }
        guard frame.requestID != 0 else {
            throw WireError(.missingRequestID, "requests must carry a non-zero request_id")
        }
        return frame
    }

    /// Encodes a server frame as a binary frame body.
    public static func encode(_ frame: Warbler_V1_ServerFrame, allocator: ByteBufferAllocator) -> ByteBuffer {
        // Serializing a fully initialised proto3 message cannot fail.
        let bytes: [UInt8] = try! frame.serializedBytes()
        var buffer = allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        return buffer
    }

    /// Encodes a server frame for a WebSocket text message.
    public static func encodeJSON(_ frame: Warbler_V1_ServerFrame) -> String {
        // JSON encoding of generated messages without Any fields cannot fail.
        try! frame.jsonString()
    }

    /// Encodes a client frame as a binary frame body (used by the SDK).
    public static func encode(_ frame: Warbler_V1_ClientFrame, allocator: ByteBufferAllocator) -> ByteBuffer {
        let bytes: [UInt8] = try! frame.serializedBytes()
        var buffer = allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        return buffer
    }

    /// Decodes a server frame (used by the SDK).
    public static func decodeServerFrame(_ body: ByteBuffer) throws(WireError) -> Warbler_V1_ServerFrame {
        do {
            return try Warbler_V1_ServerFrame(serializedBytes: ByteBufferBytes(body))
        } catch {
            throw WireError(.malformedFrame, "frame is not a valid ServerFrame: \(error)")
        }
    }
}
