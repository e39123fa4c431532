import NIOCore
import NIOEmbedded
import Testing
import WarblerWire

@testable import WarblerServer

/// The TCP pipeline's framer: bodies in order however the bytes arrive; framing errors are fatal.
struct LengthPrefixedFramerTests {
    /// Records what the framer passes on.
    final class Recorder: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = InboundFrame
        var bodies: [[UInt8]] = []
        var errors: [WireError] = []

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard case .binary(let body) = unwrapInboundIn(data) else { return }
            bodies.append(Array(body.readableBytesView))
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            if let error = error as? WireError { errors.append(error) }
        }
    }

    func channel(maxFrameBytes: Int = 64) throws -> (EmbeddedChannel, Recorder) {
        let recorder = Recorder()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(LengthPrefixedFramer(maxFrameBytes: maxFrameBytes))
        try channel.pipeline.syncOperations.addHandler(recorder)
        return (channel, recorder)
    }

    func framed(_ bodies: [[UInt8]]) -> [UInt8] {
        bodies.flatMap { body in
            withUnsafeBytes(of: UInt32(body.count).bigEndian, Array.init) + body
        }
    }

    func write(_ bytes: ArraySlice<UInt8>, to channel: EmbeddedChannel) throws {
        try channel.writeInbound(channel.allocator.buffer(bytes: bytes))
    }

    @Test(arguments: [1, 2, 3, 5, 7, 64, 1_000])
    func bodiesComeOutWholeAndInOrderHoweverTheBytesArrive(chunk: Int) throws {
        let bodies: [[UInt8]] = [[1], [], Array(repeating: 7, count: 64), [2, 3, 4], Array(0..<40)]
        let bytes = framed(bodies)
        let (channel, recorder) = try channel()
        for start in stride(from: 0, to: bytes.count, by: chunk) {
            try write(bytes[start..<min(start + chunk, bytes.count)], to: channel)
        }
        #expect(recorder.bodies == bodies)
        #expect(recorder.errors.isEmpty)
        _ = try channel.finish()
        #expect(recorder.errors.isEmpty, "a stream that ends between frames is an orderly close")
    }

    @Test func anOversizeHeaderIsFatalAndNothingAfterItIsRead() throws {
        let (channel, recorder) = try channel(maxFrameBytes: 64)
        try write(framed([[9]])[...], to: channel)
        // 65 bytes announced: refused at the header, before the body arrives.
        try write([0, 0, 0, 65][...], to: channel)
        #expect(recorder.errors.map(\.code) == [.frameTooLarge])
        #expect(recorder.errors.first?.isFatal == true)
        // The stream cannot be resynchronised: a well-formed frame after it is not taken.
        try write(framed([[5, 5]])[...], to: channel)
        _ = try channel.finish()
        #expect(recorder.bodies == [[9]])
        #expect(recorder.errors.count == 1)
    }

    @Test func aStreamEndingInsideAFrameIsAnError() throws {
        let (channel, recorder) = try channel()
        let bytes = framed([[1, 2], [3, 4, 5]])
        try write(bytes.dropLast(2), to: channel)
        #expect(recorder.bodies == [[1, 2]])
        _ = try channel.finish()
        #expect(recorder.errors.map(\.code) == [.malformedFrame])
    }
}
