import NIOCore
import NIOWebSocket
import Synchronization
import WarblerWire

/// How frames travel on one connection.
enum WireFormat: UInt8, Sendable {
    /// TCP: a 4-byte big-endian length, then the protobuf bytes.
    case lengthPrefixed = 0
    /// WebSocket binary message: the protobuf bytes.
    case webSocketBinary = 1
    /// WebSocket text message: the protobuf JSON mapping (for browsers).
    case webSocketText = 2
}

/// A frame received from a client, as its transport delivered it.
enum InboundFrame: Sendable {
    case binary(ByteBuffer)
    case json(String)
}

/// Writes server frames to one connection in its format. Safe from any thread: NIO channels accept writes
/// from anywhere and keep their order. A WebSocket client is answered in the kind of message it last sent.
///
/// Writes are coalesced: a frame is written without a flush, and one flush is scheduled on the channel's event
/// loop for everything written before it runs — so the acks and pushes of one commit round reach a connection
/// in one `writev` rather than one syscall each. The write and the flush bookkeeping both happen on the event
/// loop, so a write can never slip in after the last scheduled flush and wait forever.
final class FrameSink: @unchecked Sendable {
    let channel: any Channel
    private let format: Atomic<UInt8>
    /// Touched only on the channel's event loop.
    private var flushPending = false

    init(channel: any Channel, format: WireFormat) {
        self.channel = channel
        self.format = Atomic(format.rawValue)
    }

    private func write(_ data: some Sendable) {
        let loop = channel.eventLoop
        if loop.inEventLoop {
            writeOnLoop(data)
        } else {
            loop.execute { self.writeOnLoop(data) }
        }
    }

    private func writeOnLoop(_ data: some Sendable) {
        channel.write(data, promise: nil)
        guard !flushPending else { return }
        flushPending = true
        // Runs after every write queued so far; a write queued after it finds the flag clear and schedules anew.
        channel.eventLoop.execute {
            self.flushPending = false
            self.channel.flush()
        }
    }

    /// Switches between binary and text for a WebSocket connection.
    func noteClientUsed(_ newFormat: WireFormat) { format.store(newFormat.rawValue, ordering: .relaxed) }

    func send(_ frame: Warbler_V1_ServerFrame) {
        var encoded = EncodedFrame(frame)
        send(&encoded)
    }

    /// Sends a frame that may go to many connections: it is encoded once per wire format, not once per
    /// connection (the buffers are shared; writing does not change them).
    func send(_ encoded: inout EncodedFrame) {
        switch WireFormat(rawValue: format.load(ordering: .relaxed)) ?? .lengthPrefixed {
        case .lengthPrefixed:
            write(encoded.lengthPrefixed(channel.allocator))
        case .webSocketBinary:
            write(WebSocketFrame(fin: true, opcode: .binary, data: encoded.body(channel.allocator)))
        case .webSocketText:
            write(WebSocketFrame(fin: true, opcode: .text, data: encoded.json(channel.allocator)))
        }
    }
}

/// A server frame with its encodings, each made on first use.
struct EncodedFrame {
    let frame: Warbler_V1_ServerFrame
    private var prefixed: ByteBuffer?
    private var binary: ByteBuffer?
    private var text: ByteBuffer?

    init(_ frame: Warbler_V1_ServerFrame) { self.frame = frame }

    /// The 4-byte length and the protobuf bytes (TCP).
    mutating func lengthPrefixed(_ allocator: ByteBufferAllocator) -> ByteBuffer {
        if let prefixed { return prefixed }
        let encoded = FrameCodec.lengthPrefixed(frame, allocator: allocator)
        prefixed = encoded
        return encoded
    }

    /// The protobuf bytes (WebSocket binary message).
    mutating func body(_ allocator: ByteBufferAllocator) -> ByteBuffer {
        if let binary { return binary }
        let encoded = FrameCodec.encode(frame, allocator: allocator)
        binary = encoded
        return encoded
    }

    /// The protobuf JSON mapping (WebSocket text message).
    mutating func json(_ allocator: ByteBufferAllocator) -> ByteBuffer {
        if let text { return text }
        let string = FrameCodec.encodeJSON(frame)
        var encoded = allocator.buffer(capacity: string.utf8.count)
        encoded.writeString(string)
        text = encoded
        return encoded
    }
}

/// Turns length-prefixed frame bodies into inbound frames (TCP pipeline).
final class LengthPrefixedAdapter: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = InboundFrame

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.fireChannelRead(wrapInboundOut(.binary(unwrapInboundIn(data))))
    }
}

/// Turns WebSocket messages into inbound frames, answers pings, and closes cleanly (WebSocket pipeline).
/// Fragmented messages are reassembled up to the frame limit.
final class WebSocketAdapter: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = InboundFrame
    typealias OutboundOut = WebSocketFrame

    private let maxFrameBytes: Int
    private var fragments: ByteBuffer?
    private var fragmentsAreText = false
    private var closing = false

    init(maxFrameBytes: Int) { self.maxFrameBytes = maxFrameBytes }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .ping:
            var payload = frame.unmaskedData
            let pong = WebSocketFrame(fin: true, opcode: .pong, data: payload.readSlice(length: payload.readableBytes)!)
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .connectionClose:
            guard !closing else {
                context.close(promise: nil)
                return
            }
            closing = true
            let reply = WebSocketFrame(fin: true, opcode: .connectionClose, data: frame.unmaskedData)
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(reply)).whenComplete { _ in channel.close(promise: nil) }
        case .text, .binary:
            fragments = frame.unmaskedData
            fragmentsAreText = frame.opcode == .text
            if frame.fin { deliver(context) }
        case .continuation:
            guard var buffer = fragments else { return }
            var more = frame.unmaskedData
            buffer.writeBuffer(&more)
            fragments = buffer
            if buffer.readableBytes > maxFrameBytes {
                context.fireErrorCaught(
                    WireError(.frameTooLarge, "message exceeds \(maxFrameBytes) bytes", fatal: true)
                )
                fragments = nil
                return
            }
            if frame.fin { deliver(context) }
        default:
            break
        }
    }

    private func deliver(_ context: ChannelHandlerContext) {
        guard let buffer = fragments else { return }
        fragments = nil
        if buffer.readableBytes > maxFrameBytes {
            context.fireErrorCaught(WireError(.frameTooLarge, "message exceeds \(maxFrameBytes) bytes", fatal: true))
            return
        }
        if fragmentsAreText {
            context.fireChannelRead(wrapInboundOut(.json(String(buffer: buffer))))
        } else {
            context.fireChannelRead(wrapInboundOut(.binary(buffer)))
        }
    }
}
