import Foundation
import NIOCore
import NIOWebSocket
import Testing
import WarblerClient
import WarblerWire

/// Browsers' transport: the same frames as binary WebSocket messages, and the protobuf JSON mapping as text.
@Suite(.serialized)
struct WebSocketTests {
    static let password = "correct horse battery staple"

    func serverFrame(_ frame: WebSocketFrame) -> Warbler_V1_ServerFrame? {
        switch frame.opcode {
        case .binary: return try? FrameCodec.decodeServerFrame(frame.data)
        case .text: return try? Warbler_V1_ServerFrame(jsonString: String(buffer: frame.data))
        default: return nil
        }
    }

    @Test func aBrowserStyleClientChatsInBinaryAndJSON() async throws {
        let node = try NodeProcess()
        for user in ["ada", "bob"] { try await node.addUser(user, password: Self.password) }
        try await node.start()
        let (bob, bobEvents) = try await node.login("bob", password: Self.password)
        let direct = try await bob.createDirect(with: "ada")

        let web = try await WebSocketTestClient.connect(port: node.webSocketPort)
        // Binary: Hello → Welcome in binary.
        var hello = Warbler_V1_ClientFrame()
        hello.requestID = 1
        hello.hello = .with { $0.protocolVersion = 1 }
        web.sendBinary(hello)
        let welcome = await web.wait { $0.opcode == .binary }
        #expect(
            welcome.flatMap(serverFrame).map {
                if case .welcome = $0.body { return true }
                return false
            } == true
        )
        // Text: login and send in JSON; the answers come back as JSON text.
        web.sendText(#"{"requestId":"2","login":{"user":"ada","password":"\#(Self.password)"}}"#)
        let loggedIn = await web.wait { $0.opcode == .text && String(buffer: $0.data).contains("loggedIn") }
        #expect(loggedIn != nil)
        let payload = Data("from the browser".utf8).base64EncodedString()
        web.sendText(
            #"{"requestId":"3","send":{"conversationId":"\#(direct.conversationID)","clientMessageId":"w1","payload":"\#(payload)"}}"#
        )
        let ack = await web.wait { $0.opcode == .text && String(buffer: $0.data).contains("\"ack\"") }
        #expect(ack.flatMap(serverFrame)?.ack.seq == 1)
        #expect(await bobEvents.waitForMessages(1))
        #expect(bobEvents.messages.first?.text == "from the browser")
        // A push from the TCP side reaches the browser as JSON.
        _ = try await bob.send(Data("hello browser".utf8), to: direct.conversationID)
        let push = await web.wait { frame in
            frame.opcode == .text
                && serverFrame(frame).map { String(decoding: $0.messagePush.message.payload, as: UTF8.self) }
                    == "hello browser"
        }
        #expect(push.flatMap(serverFrame)?.messagePush.message.seq == 2)
        // Bad JSON is a typed error, and the connection stays usable.
        web.sendText("{not json")
        let error = await web.wait {
            $0.opcode == .text && String(buffer: $0.data).contains("protocol.malformed_frame")
        }
        #expect(error != nil)
        web.sendText(#"{"requestId":"9","ping":{"nonce":"5"}}"#)
        #expect(await web.wait { String(buffer: $0.data).contains("pong") } != nil)
        await web.close()
        await bob.close()
        node.stop()
    }

    @Test func plainHTTPIsToldToUpgrade() async throws {
        let node = try NodeProcess()
        try await node.start()
        let raw = try RawConnection(port: node.webSocketPort)
        raw.write(Array("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".utf8))
        var response = [UInt8](repeating: 0, count: 4096)
        let count = response.withUnsafeMutableBytes { recv(raw.socketDescriptor, $0.baseAddress, $0.count, 0) }
        let text = String(decoding: response.prefix(max(count, 0)), as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 426"), "\(text)")
        node.stop()
    }
}
