import Foundation
import NIOCore
import Testing
import WarblerWire

/// Feeds `bytes` to a decoder in chunks and collects the frames (or the first error).
func decodeAll(_ chunks: [[UInt8]], maxFrameBytes: Int = 1 << 20) -> (frames: [[UInt8]], error: WireError?) {
    var decoder = FrameDecoder(maxFrameBytes: maxFrameBytes)
    var buffer = ByteBuffer()
    var frames: [[UInt8]] = []
    do {
        for chunk in chunks {
            buffer.writeBytes(chunk)
            while let frame = try decoder.decode(buffer: &buffer) { frames.append(Array(frame.readableBytesView)) }
        }
        while let frame = try decoder.decodeLast(buffer: &buffer, seenEOF: true) {
            frames.append(Array(frame.readableBytesView))
        }
    } catch let error as WireError {
        return (frames, error)
    } catch {
        Issue.record("decoder threw a non-protocol error: \(error)")
    }
    return (frames, nil)
}

func framed(_ bodies: [[UInt8]]) -> [UInt8] {
    var output = ByteBuffer()
    for body in bodies { writeFrame(ByteBuffer(bytes: body), into: &output) }
    return Array(output.readableBytesView)
}

func sampleRequests() -> [Warbler_V1_ClientFrame] {
    var frames: [Warbler_V1_ClientFrame] = []
    func add(_ build: (inout Warbler_V1_ClientFrame) -> Void) {
        var frame = Warbler_V1_ClientFrame()
        frame.requestID = UInt64(frames.count + 1)
        build(&frame)
        frames.append(frame)
    }
    add {
        $0.hello = .with {
            $0.protocolVersion = 1
            $0.clientName = "test"
        }
    }
    add {
        $0.login = .with {
            $0.user = "ada"
            $0.password = "correct horse"
        }
    }
    add { $0.resumeSession = .with { $0.sessionToken = "token" } }
    add { $0.logout = .init() }
    add { $0.listConversations = .init() }
    add { $0.createDirect = .with { $0.user = "grace" } }
    add {
        $0.createGroup = .with {
            $0.title = "ops"
            $0.members = ["ada", "grace"]
        }
    }
    add {
        $0.addMembers = .with {
            $0.conversationID = "c1"
            $0.members = ["linus"]
        }
    }
    add {
        $0.removeMember = .with {
            $0.conversationID = "c1"
            $0.member = "linus"
        }
    }
    add { $0.leaveConversation = .with { $0.conversationID = "c1" } }
    add {
        $0.send = .with {
            $0.conversationID = "c1"
            $0.clientMessageID = "m1"
            $0.payload = Data("hi".utf8)
        }
    }
    add {
        $0.getHistory = .with {
            $0.conversationID = "c1"
            $0.beforeSeq = 10
            $0.limit = 20
        }
    }
    add {
        $0.sync = .with {
            $0.lastSeq = ["c1": 4]
            $0.limit = 100
        }
    }
    add {
        $0.markRead = .with {
            $0.conversationID = "c1"
            $0.seq = 4
        }
    }
    add {
        $0.setTyping = .with {
            $0.conversationID = "c1"
            $0.typing = true
        }
    }
    add { $0.ping = .with { $0.nonce = 7 } }
    return frames
}

struct FramingTests {
    /// Frames decode straight from the slices of the buffer they arrived in (``ByteBufferBytes``), wherever the
    /// slice starts in it.
    @Test func framesDecodeFromSlicesOfTheBufferTheyArrivedIn() throws {
        let requests = sampleRequests()
        var push = Warbler_V1_ServerFrame()
        push.messagePush.message = .with {
            $0.conversationID = "c-1"
            $0.seq = 7
            $0.payload = Data(repeating: 0xAB, count: 300)
        }
        var buffer = ByteBuffer(bytes: [9, 9, 9])
        for request in requests {
            writeFrame(ByteBuffer(bytes: try request.serializedBytes() as [UInt8]), into: &buffer)
        }
        writeFrame(ByteBuffer(bytes: try push.serializedBytes() as [UInt8]), into: &buffer)
        buffer.moveReaderIndex(forwardBy: 3)
        var decoder = FrameDecoder(maxFrameBytes: 1 << 20)
        var decoded: [Warbler_V1_ClientFrame] = []
        for _ in requests {
            let body = try #require(try decoder.decode(buffer: &buffer))
            decoded.append(try FrameCodec.decodeClientFrame(body))
        }
        #expect(decoded == requests)
        let body = try #require(try decoder.decode(buffer: &buffer))
        #expect(try FrameCodec.decodeServerFrame(body) == push)
        #expect(buffer.readableBytes == 0)
        // Only the readable bytes count, not what was read before them or the room after them.
        var partlyRead = ByteBuffer(bytes: [0xFF, 0xFF] + (try push.serializedBytes() as [UInt8]))
        partlyRead.moveReaderIndex(forwardBy: 2)
        partlyRead.reserveCapacity(partlyRead.writerIndex + 64)
        #expect(try FrameCodec.decodeServerFrame(partlyRead) == push)
    }

    @Test func framesSurviveAnyChunking() {
        let bodies: [[UInt8]] = [[], [1], Array(repeating: 7, count: 300), [1, 2, 3]]
        let stream = framed(bodies)
        for chunkSize in [1, 2, 3, 5, 64, stream.count] {
            let chunks = stride(from: 0, to: stream.count, by: chunkSize).map {
                Array(stream[$0..<min($0 + chunkSize, stream.count)])
            }
            let result = decodeAll(chunks)
            #expect(result.error == nil)
            #expect(result.frames == bodies, "chunk size \(chunkSize)")
        }
    }

    @Test func anOversizeFrameIsRefusedAtItsHeader() {
        // Only the header arrives: the decoder refuses before any body is buffered.
        let header: [UInt8] = [0x00, 0x10, 0x00, 0x01]
        let result = decodeAll([header], maxFrameBytes: 1 << 20)
        #expect(result.error?.code == .frameTooLarge)
        #expect(result.error?.isFatal == true)
    }

    @Test func aFrameOfExactlyTheLimitIsAccepted() {
        let body = [UInt8](repeating: 1, count: 1024)
        let result = decodeAll([framed([body])], maxFrameBytes: 1024)
        #expect(result.error == nil)
        #expect(result.frames == [body])
    }

    @Test func aStreamEndingInsideAFrameIsAnError() {
        let stream = framed([[1, 2, 3, 4]])
        let result = decodeAll([Array(stream.dropLast())])
        #expect(result.error?.code == .malformedFrame)
    }

    @Test func everyRequestRoundTripsInBinaryAndJSON() throws {
        let allocator = ByteBufferAllocator()
        for frame in sampleRequests() {
            let body = FrameCodec.encode(frame, allocator: allocator)
            #expect(try FrameCodec.decodeClientFrame(body) == frame)
            #expect(try FrameCodec.decodeClientFrame(json: frame.jsonString()) == frame)
        }
    }

    @Test func anEmptyBodyIsAnUnknownRequest() {
        var frame = Warbler_V1_ClientFrame()
        frame.requestID = 1
        do {
            _ = try FrameCodec.decodeClientFrame(FrameCodec.encode(frame, allocator: ByteBufferAllocator()))
            Issue.record("accepted a frame with no request")
        } catch {
            #expect(error.code == .unknownRequest)
            #expect(!error.isFatal)
        }
    }

    @Test func aRequestWithoutAnIDIsRefused() {
        var frame = Warbler_V1_ClientFrame()
        frame.ping = .with { $0.nonce = 1 }
        do {
            _ = try FrameCodec.decodeClientFrame(FrameCodec.encode(frame, allocator: ByteBufferAllocator()))
            Issue.record("accepted request_id 0")
        } catch {
            #expect(error.code == .missingRequestID)
        }
    }

    @Test func unknownJSONFieldsAndGarbageAreMalformed() {
        for text in ["{\"requestId\":\"1\",\"bogus\":1}", "not json", "{\"requestId\":\"1\",\"ping\":\"x\"}", ""] {
            do {
                _ = try FrameCodec.decodeClientFrame(json: text)
                Issue.record("accepted \(text)")
            } catch {
                #expect(error.code == .malformedFrame, "\(text): \(error)")
            }
        }
    }

    @Test func errorsBecomeErrorFrames() {
        let frame = WireError(.frameTooLarge, "too big", fatal: true).frame(requestID: 9)
        #expect(frame.requestID == 9)
        #expect(frame.error.code == "protocol.frame_too_large")
        #expect(frame.error.fatal)
    }

    @Test func limitsValidate() throws {
        try ProtocolLimits().validate()
        var limits = ProtocolLimits()
        limits.maxPayloadBytes = limits.maxFrameBytes
        #expect(throws: WireError.self) { try limits.validate() }
    }
}

/// Random and mutated bytes through the decoder and the codec: every outcome is a frame or a typed error.
struct FrameFuzzTests {
    @Test(arguments: 0..<8)
    func randomAndMutatedInputNeverCrashes(round: Int) {
        var random = SystemRandomNumberGenerator()
        let allocator = ByteBufferAllocator()
        let valid = sampleRequests().map { Array(FrameCodec.encode($0, allocator: allocator).readableBytesView) }
        let knownCodes: Set<ErrorCode> = [.malformedFrame, .unknownRequest, .missingRequestID, .frameTooLarge]
        for _ in 0..<1500 {
            var stream: [UInt8]
            switch Int.random(in: 0..<4, using: &random) {
            case 0:
                stream = (0..<Int.random(in: 0..<200, using: &random)).map { _ in
                    UInt8.random(in: 0...255, using: &random)
                }
            case 1:
                // A valid stream with bytes flipped.
                stream = framed(valid)
                for _ in 0..<Int.random(in: 1...8, using: &random) {
                    stream[Int.random(in: 0..<stream.count, using: &random)] = UInt8.random(in: 0...255, using: &random)
                }
            case 2:
                // Valid framing around mutated bodies: exercises the protobuf decoder.
                stream = framed(
                    valid.map { body in
                        var body = body
                        if !body.isEmpty {
                            body[Int.random(in: 0..<body.count, using: &random)] ^= UInt8.random(
                                in: 1...255,
                                using: &random
                            )
                        }
                        if Bool.random(using: &random) { body.append(contentsOf: [0x0A, 0xFF, 0xFF]) }
                        return body
                    }
                )
            default:
                // Truncated or oversized headers.
                stream = framed(valid)
                stream = Array(stream.prefix(Int.random(in: 0...stream.count, using: &random)))
                if Bool.random(using: &random) { stream = [0xFF, 0xFF, 0xFF, 0xFF] + stream }
            }
            let chunkSize = Int.random(in: 1...64, using: &random)
            let chunks = stride(from: 0, to: stream.count, by: chunkSize).map {
                Array(stream[$0..<min($0 + chunkSize, stream.count)])
            }
            let result = decodeAll(chunks, maxFrameBytes: 4096)
            if let error = result.error { #expect(knownCodes.contains(error.code)) }
            for body in result.frames {
                do {
                    _ = try FrameCodec.decodeClientFrame(ByteBuffer(bytes: body))
                } catch {
                    #expect(knownCodes.contains(error.code), "\(error)")
                }
            }
        }
        _ = round
    }
}
