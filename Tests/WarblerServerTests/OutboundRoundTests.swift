import NIOCore
import NIOEmbedded
import NIOWebSocket
import Testing
import WarblerWire

@testable import WarblerServer

/// Frames written during an apply round leave once per connection, in order; outside a round, one by one.
struct OutboundRoundTests {
    func ack(_ seq: UInt64) -> Warbler_V1_ServerFrame {
        .with {
            $0.ack.conversationID = "c-1"
            $0.ack.seq = seq
        }
    }

    /// Every buffer the channel wrote, and the acks' seqs they hold in order.
    func written(_ channel: EmbeddedChannel) throws -> (buffers: Int, seqs: [UInt64]) {
        var buffers = 0
        var seqs: [UInt64] = []
        while var buffer = try channel.readOutbound(as: ByteBuffer.self) {
            buffers += 1
            while let length = buffer.readInteger(as: UInt32.self) {
                let body = buffer.readSlice(length: Int(length))
                seqs.append(try FrameCodec.decodeServerFrame(try #require(body)).ack.seq)
            }
        }
        return (buffers, seqs)
    }

    @Test func aRoundWritesEachConnectionsFramesOnceInOrder() throws {
        let (first, second) = (EmbeddedChannel(), EmbeddedChannel())
        let a = FrameSink(channel: first, format: .lengthPrefixed)
        let b = FrameSink(channel: second, format: .lengthPrefixed)
        OutboundRound.gather {
            for seq in UInt64(1)...3 { a.send(ack(seq)) }
            b.send(ack(10))
            a.send(ack(4))
            b.send(ack(11))
            // Nothing leaves before the round ends.
            first.embeddedEventLoop.run()
            #expect((try? first.readOutbound(as: ByteBuffer.self)) == nil)
        }
        first.embeddedEventLoop.run()
        second.embeddedEventLoop.run()
        let (buffers, seqs) = try written(first)
        #expect(buffers == 1)
        #expect(seqs == [1, 2, 3, 4])
        let other = try written(second)
        #expect(other.buffers == 1)
        #expect(other.seqs == [10, 11])
        // Outside a round every frame is its own write (flushed together).
        for seq in UInt64(5)...6 { a.send(ack(seq)) }
        first.embeddedEventLoop.run()
        let later = try written(first)
        #expect(later.buffers == 2)
        #expect(later.seqs == [5, 6])
    }

    @Test func aRoundWritesWebSocketMessagesInOrder() throws {
        let channel = EmbeddedChannel()
        let sink = FrameSink(channel: channel, format: .webSocketBinary)
        OutboundRound.gather {
            for seq in UInt64(1)...3 { sink.send(ack(seq)) }
        }
        channel.embeddedEventLoop.run()
        var seqs: [UInt64] = []
        while let frame = try channel.readOutbound(as: WebSocketFrame.self) {
            seqs.append(try FrameCodec.decodeServerFrame(frame.data).ack.seq)
        }
        #expect(seqs == [1, 2, 3])
    }
}
