import NIOCore
import NIOPosix
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
/// Writes are coalesced (``CoalescingWriter``): the acks and pushes of one commit round reach a connection in
/// one `writev` rather than one syscall each.
final class FrameSink: Sendable {
    private let writer: CoalescingWriter
    private let format: Atomic<UInt8>

    init(channel: any Channel, format: WireFormat) {
        self.writer = CoalescingWriter(channel: channel)
        self.format = Atomic(format.rawValue)
    }

    /// The connection's channel.
    var channel: any Channel { writer.channel }

    /// Switches between binary and text for a WebSocket connection.
    func noteClientUsed(_ newFormat: WireFormat) { format.store(newFormat.rawValue, ordering: .relaxed) }

    func send(_ frame: Warbler_V1_ServerFrame) {
        var encoded = EncodedFrame(frame)
        send(&encoded)
    }

    /// Sends a frame that may go to many connections: it is encoded once per wire format, not once per
    /// connection (the buffers are shared; writing does not change them). Inside ``OutboundRound/gather(_:)``
    /// the frame waits for the end of the round, with the round's other frames to this connection.
    func send(_ encoded: inout EncodedFrame) {
        let round = OutboundRound.current
        let message: WebSocketFrame
        switch WireFormat(rawValue: format.load(ordering: .relaxed)) ?? .lengthPrefixed {
        case .lengthPrefixed:
            let bytes = encoded.lengthPrefixed(channel.allocator)
            if let round { round.add(bytes, to: self) } else { writer.write(bytes) }
            return
        case .webSocketBinary:
            message = WebSocketFrame(fin: true, opcode: .binary, data: encoded.body(channel.allocator))
        case .webSocketText:
            message = WebSocketFrame(fin: true, opcode: .text, data: encoded.json(channel.allocator))
        }
        if let round { round.add(message, to: self) } else { writer.write(message) }
    }

    /// Writes what a round gathered for this connection: its length-prefixed frames as one buffer, or its
    /// WebSocket messages in one event-loop task.
    fileprivate func write(gathered bytes: ByteBuffer?, _ frames: [WebSocketFrame]) {
        if let bytes { writer.write(bytes) }
        if !frames.isEmpty { writer.write(contentsOf: frames) }
    }
}

/// The frames one thread writes to connections during a round of completions and deliveries (an apply batch:
/// its acks and pushes), gathered per connection and written when the round ends — one event-loop task and
/// one pipeline write per connection and round, instead of one per frame. Frames keep their order per
/// connection; a round is written before the thread starts the next one. Confined to the thread that gathers
/// it (it is reachable only through that thread's thread-specific slot).
final class OutboundRound: @unchecked Sendable {
    private struct Pending {
        let sink: FrameSink
        var bytes: ByteBuffer?
        var frames: [WebSocketFrame] = []
    }

    private static let currentRound = ThreadSpecificVariable<OutboundRound>()
    private var pending: [ObjectIdentifier: Pending] = [:]

    /// The round the calling thread is gathering, if any.
    static var current: OutboundRound? { currentRound.currentValue }

    /// Runs `body`, gathering the frames it sends, then writes them.
    static func gather(_ body: () -> Void) {
        guard currentRound.currentValue == nil else { return body() }
        let round = OutboundRound()
        currentRound.currentValue = round
        body()
        currentRound.currentValue = nil
        for entry in round.pending.values { entry.sink.write(gathered: entry.bytes, entry.frames) }
    }

    fileprivate func add(_ bytes: ByteBuffer, to sink: FrameSink) {
        var bytes = bytes
        pending[ObjectIdentifier(sink), default: Pending(sink: sink)].bytes.setOrWriteBuffer(&bytes)
    }

    fileprivate func add(_ frame: WebSocketFrame, to sink: FrameSink) {
        pending[ObjectIdentifier(sink), default: Pending(sink: sink)].frames.append(frame)
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

/// Splits a TCP connection's bytes into length-prefixed frames (``FrameSplitter``) and passes each body on as an
/// inbound frame: one pipeline step instead of NIO's `ByteToMessageHandler` and an adapter after it. A framing
/// error (an oversize frame, which is refused at its header, or a stream that ends inside a frame) goes on as
/// `errorCaught`, and the bytes after it are ignored: the stream cannot be resynchronised.
final class LengthPrefixedFramer: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = InboundFrame

    private let frames: FrameSplitter

    init(maxFrameBytes: Int) { frames = FrameSplitter(maxFrameBytes: maxFrameBytes) }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        do {
            try frames.split(unwrapInboundIn(data)) { context.fireChannelRead(wrapInboundOut(.binary($0))) }
        } catch {
            context.fireErrorCaught(error)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        do {
            try frames.finish { context.fireChannelRead(wrapInboundOut(.binary($0))) }
        } catch {
            context.fireErrorCaught(error)
        }
        context.fireChannelInactive()
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
