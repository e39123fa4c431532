import Foundation
import NIOCore
import Testing
import WarblerClient
import WarblerWire

/// Bad input gets a typed error, changes nothing, and never stops the node from serving everyone else.
@Suite(.serialized)
struct BadInputTests {
    static let password = "correct horse battery staple"

    @Test func everyKindOfBadInputIsATypedErrorAndTheNodeKeepsServing() async throws {
        let node = try NodeProcess()
        for user in ["ada", "bob", "eve"] { try await node.addUser(user, password: Self.password) }
        try await node.start()
        // A healthy client keeps chatting throughout.
        let (ada, _) = try await node.login("ada", password: Self.password)
        let conversation = try await ada.createDirect(with: "bob")
        _ = try await ada.send(Data("before".utf8), to: conversation.conversationID)

        // The first frame must be Hello: anything else is fatal.
        var raw = try RawConnection(port: node.port)
        raw.request(1, .ping(.with { $0.nonce = 1 }))
        #expect(raw.nextErrorCode() == "protocol.hello_required")
        #expect(raw.isClosedByPeer())

        // Unsupported version: fatal.
        raw = try RawConnection(port: node.port)
        raw.request(1, .hello(.with { $0.protocolVersion = 99 }))
        #expect(raw.nextErrorCode() == "protocol.unsupported_version")
        #expect(raw.isClosedByPeer())

        // Garbage that is not even a frame after Hello: the frame is reported, the connection stays.
        raw = try RawConnection(port: node.port)
        raw.handshake()
        raw.writeFrame([0xFF, 0xFF, 0xFF, 0x07, 0x01])
        #expect(raw.nextErrorCode() == "protocol.malformed_frame")
        // An empty body (an unknown request) and a missing request id.
        raw.writeFrame([])
        #expect(raw.nextErrorCode() == "protocol.unknown_request")
        raw.request(0, .ping(.with { $0.nonce = 2 }))
        #expect(raw.nextErrorCode() == "protocol.missing_request_id")
        // Requests before login.
        raw.request(5, .listConversations(.init()))
        #expect(raw.nextErrorCode() == "auth.required")
        raw.request(
            6,
            .send(
                .with {
                    $0.conversationID = conversation.conversationID
                    $0.clientMessageID = "x"
                    $0.payload = Data("sneaky".utf8)
                }
            )
        )
        #expect(raw.nextErrorCode() == "auth.required")
        // Wrong credentials, and an unknown user: the same answer.
        #expect(
            raw.login("ada", "wrong password").map { frame -> String? in
                if case .error(let error) = frame.body { return error.code }
                return nil
            } == "auth.invalid_credentials"
        )
        #expect(
            raw.login("nobody", "whatever").map { frame -> String? in
                if case .error(let error) = frame.body { return error.code }
                return nil
            } == "auth.invalid_credentials"
        )

        // Logged in as eve: forbidden things.
        guard case .loggedIn = raw.login("eve", Self.password)?.body else {
            Issue.record("eve could not log in")
            return
        }
        raw.request(
            10,
            .send(
                .with {
                    $0.conversationID = conversation.conversationID
                    $0.clientMessageID = "intrude"
                    $0.payload = Data("hi".utf8)
                }
            )
        )
        #expect(raw.nextErrorCode() == "chat.conversation_not_found")
        raw.request(11, .getHistory(.with { $0.conversationID = conversation.conversationID }))
        #expect(raw.nextErrorCode() == "chat.conversation_not_found")
        raw.request(12, .getHistory(.with { $0.conversationID = "no-such-id" }))
        #expect(raw.nextErrorCode() == "chat.conversation_not_found")
        raw.request(13, .createDirect(.with { $0.user = "ghost" }))
        #expect(raw.nextErrorCode() == "chat.user_not_found")
        let own = try await node.login("eve", password: Self.password).0.createDirect(with: "bob")
        raw.request(
            14,
            .send(
                .with {
                    $0.conversationID = own.conversationID
                    $0.clientMessageID = "e"
                    $0.payload = Data()
                }
            )
        )
        #expect(raw.nextErrorCode() == "chat.invalid_argument")
        raw.request(
            15,
            .send(
                .with {
                    $0.conversationID = own.conversationID
                    $0.clientMessageID = "big"
                    $0.payload = Data(repeating: 1, count: 300 * 1024)
                }
            )
        )
        #expect(raw.nextErrorCode() == "chat.payload_too_large")
        raw.request(16, .createGroup(.with { $0.title = "" }))
        #expect(raw.nextErrorCode() == "chat.invalid_argument")

        // An oversize frame: refused at its header, fatal.
        raw.write([0x7F, 0xFF, 0xFF, 0xFF, 0x00])
        #expect(raw.nextErrorCode() == "protocol.frame_too_large")
        #expect(raw.isClosedByPeer())

        // Nothing was stored by any of it, and ada carries on.
        _ = try await ada.send(Data("after".utf8), to: conversation.conversationID)
        let history = try await ada.history(of: conversation.conversationID)
        #expect(history.messages.map { String(decoding: $0.payload, as: UTF8.self) } == ["before", "after"])
        #expect(node.isRunning)
        await ada.close()
        node.stop()
    }

    @Test func repeatedWrongPasswordsLockTheNameOut() async throws {
        let node = try NodeProcess()
        try await node.addUser("ada", password: Self.password)
        try await node.start()
        let raw = try RawConnection(port: node.port)
        raw.handshake()
        var codes: [String] = []
        for _ in 0..<6 {
            if case .error(let error) = raw.login("ada", "not the password")?.body { codes.append(error.code) }
        }
        #expect(codes.prefix(5).allSatisfy { $0 == "auth.invalid_credentials" })
        #expect(codes.last == "auth.locked_out")
        // Even the right password is refused while locked out.
        if case .error(let error) = raw.login("ada", Self.password)?.body {
            #expect(error.code == "auth.locked_out")
        } else {
            Issue.record("a locked-out name logged in")
        }
        node.stop()
    }

    @Test func randomBytesNeverCrashTheNode() async throws {
        let node = try NodeProcess()
        try await node.addUser("ada", password: Self.password)
        try await node.start()
        var generator = SystemRandomNumberGenerator()
        for round in 0..<40 {
            let raw = try RawConnection(port: node.port)
            if round % 2 == 0 { raw.handshake() }
            let junk = (0..<Int.random(in: 1...2000, using: &generator)).map { _ in
                UInt8.random(in: 0...255, using: &generator)
            }
            raw.write(junk)
        }
        try await Task.sleep(nanoseconds: 300_000_000)
        #expect(node.isRunning)
        let (ada, _) = try await node.login("ada", password: Self.password)
        #expect(try await ada.listConversations().isEmpty)
        await ada.close()
        node.stop()
    }
}
