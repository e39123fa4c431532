import NIOCore
import NIOEmbedded
import Testing
import WarblerWire

@testable import WarblerClient

/// The SDK's framing: a bad frame from the node ends the connection.
struct ClientFrameHandlerTests {
    func channel() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(ClientFrameHandler(client: nil, maxFrameBytes: 64))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 7400)).wait()
        return channel
    }

    func frame(_ body: [UInt8]) -> ByteBuffer {
        var buffer = ByteBuffer()
        writeFrame(ByteBuffer(bytes: body), into: &buffer)
        return buffer
    }

    @Test func wellFormedFramesInPiecesKeepTheConnection() throws {
        let channel = try channel()
        var pong = Warbler_V1_ServerFrame()
        pong.requestID = 3
        pong.pong = .init()
        var bytes = frame(try pong.serializedBytes()) + frame(try pong.serializedBytes())
        while let piece = bytes.readSlice(length: min(3, bytes.readableBytes)), piece.readableBytes > 0 {
            try channel.writeInbound(piece)
        }
        #expect(channel.isActive)
    }

    @Test func anOversizeFrameClosesTheConnectionAtItsHeader() throws {
        let channel = try channel()
        try channel.writeInbound(ByteBuffer(bytes: [0, 0, 0, 65]))
        #expect(!channel.isActive)
    }

    @Test func aMalformedFrameClosesTheConnection() throws {
        let channel = try channel()
        try channel.writeInbound(frame([0xFF, 0xFF, 0xFF]))
        #expect(!channel.isActive)
    }
}

extension ByteBuffer {
    fileprivate static func + (lhs: ByteBuffer, rhs: ByteBuffer) -> ByteBuffer {
        var joined = lhs
        var rhs = rhs
        joined.writeBuffer(&rhs)
        return joined
    }
}
