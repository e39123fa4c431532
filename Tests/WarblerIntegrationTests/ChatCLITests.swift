import Foundation
import Testing
import WarblerClient

#if canImport(Glibc)
import Glibc
#endif

/// `warbler chat` driven through a pseudo-terminal, as a person would use it.
@Suite(.serialized)
struct ChatCLITests {
    static let password = "correct horse battery staple"

    /// The `warbler chat` process on a pty, with everything it printed.
    final class PTYSession: @unchecked Sendable {
        let process = Process()
        let master: Int32
        private var output = ""

        init(arguments: [String]) throws {
            var master: Int32 = 0
            var slave: Int32 = 0
            var size = winsize(ws_row: 40, ws_col: 120, ws_xpixel: 0, ws_ypixel: 0)
            guard openpty(&master, &slave, nil, nil, &size) == 0 else { throw TestFailure("openpty failed") }
            self.master = master
            process.executableURL = URL(fileURLWithPath: NodeProcess.binary)
            process.arguments = arguments
            let terminal = FileHandle(fileDescriptor: slave, closeOnDealloc: true)
            process.standardInput = terminal
            process.standardOutput = terminal
            process.standardError = terminal
            try process.run()
            let flags = fcntl(master, F_GETFL)
            _ = fcntl(master, F_SETFL, flags | O_NONBLOCK)
        }

        deinit {
            if process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
            }
            close(master)
        }

        func type(_ text: String) {
            var bytes = Array(text.utf8)
            _ = bytes.withUnsafeMutableBytes { write(master, $0.baseAddress, $0.count) }
        }

        /// Everything printed so far.
        func drain() -> String {
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = buffer.withUnsafeMutableBytes { read(master, $0.baseAddress, $0.count) }
                if count <= 0 { break }
                output += String(decoding: buffer[0..<count], as: UTF8.self)
            }
            return output
        }

        /// Waits (without blocking a thread) until the process exits; false if it is still running at the
        /// deadline.
        func waitForExit(seconds: Double = 30) async -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while process.isRunning && Date() < deadline {
                _ = drain()
                try? await Task.sleep(nanoseconds: 50_000_000)
            }
            return !process.isRunning
        }

        /// Waits until the output contains `text`.
        func expect(_ text: String, seconds: Double = 30) async -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline {
                if drain().contains(text) { return true }
                try? await Task.sleep(nanoseconds: 50_000_000)
            }
            return drain().contains(text)
        }
    }

    @Test func aPersonChatsThroughTheTerminalClient() async throws {
        let node = try NodeProcess()
        for user in ["ada", "bob"] { try await node.addUser(user, password: Self.password) }
        try await node.start()
        let (bob, _) = try await node.login("bob", password: Self.password)
        let direct = try await bob.createDirect(with: "ada")
        _ = try await bob.send(Data("are you there?".utf8), to: direct.conversationID)

        // The first address names no node: the client goes on to the next.
        let nowhere = try NodeProcess.freePort()
        let session = try PTYSession(arguments: [
            "chat", "--server", "127.0.0.1:\(nowhere),127.0.0.1:\(node.port)", "--user", "ada",
        ])
        #expect(await session.expect("Password for ada:"))
        session.type(Self.password + "\r")
        #expect(await session.expect("Connected to node"))
        // The list shows the conversation with its unread message.
        #expect(await session.expect("1 unread"))
        #expect(await session.expect("bob: are you there?"))
        // The password was never echoed.
        #expect(!session.drain().contains(Self.password))
        session.type("1\r")
        #expect(await session.expect("── bob · ada, bob ──"))
        #expect(await session.expect("bob      are you there?"))
        // Typing and sending.
        session.type("yes, here\r")
        #expect(await session.expect("you      yes, here"))
        let history = try await bob.history(of: direct.conversationID)
        #expect(
            history.messages.map { String(decoding: $0.payload, as: UTF8.self) } == ["are you there?", "yes, here"]
        )
        // Receipts, typing and live messages from the other side.
        try await bob.markRead(direct.conversationID, upTo: 2)
        #expect(await session.expect("bob read up to #2"))
        try await bob.setTyping(true, in: direct.conversationID)
        #expect(await session.expect("bob is typing…"))
        _ = try await bob.send(Data("great".utf8), to: direct.conversationID)
        #expect(await session.expect("bob      great"))
        // Mistakes get a clear answer.
        session.type("/nonsense\r")
        #expect(await session.expect("unknown command /nonsense"))
        session.type("/back\r")
        #expect(await session.expect("Conversations"))
        session.type("/quit\r")
        let deadline = Date().addingTimeInterval(10)
        while session.process.isRunning && Date() < deadline { try await Task.sleep(nanoseconds: 50_000_000) }
        #expect(!session.process.isRunning)
        #expect(session.process.terminationStatus == 0)
        await bob.close()
        node.stop()
    }

    @Test func aConversationThatArrivesWhileTheListIsShownOpensByItsNumber() async throws {
        let node = try NodeProcess()
        for user in ["ada", "bob"] { try await node.addUser(user, password: Self.password) }
        try await node.start()
        let session = try PTYSession(arguments: ["chat", "--server", "127.0.0.1:\(node.port)", "--user", "ada"])
        #expect(await session.expect("Password for ada:"))
        session.type(Self.password + "\r")
        #expect(await session.expect("(none yet"))
        // A number with nothing in the list is a mistake, not a crash.
        session.type("1\r")
        #expect(await session.expect("type a number from the list"))
        #expect(session.process.isRunning)
        // Bob starts a conversation: it takes number 1 on the list on screen.
        let (bob, _) = try await node.login("bob", password: Self.password)
        let direct = try await bob.createDirect(with: "ada")
        _ = try await bob.send(Data("hello from bob".utf8), to: direct.conversationID)
        #expect(await session.expect("new conversation: bob — type 1 to open it"))
        session.type("1\r")
        #expect(await session.expect("── bob · ada, bob ──"))
        #expect(await session.expect("bob      hello from bob"))
        session.type("/quit\r")
        #expect(await session.waitForExit(seconds: 10))
        #expect(session.process.terminationStatus == 0)
        await bob.close()
        node.stop()
    }

    @Test func aWrongPasswordIsAClearError() async throws {
        let node = try NodeProcess()
        try await node.addUser("ada", password: Self.password)
        try await node.start()
        let session = try PTYSession(arguments: ["chat", "--server", "127.0.0.1:\(node.port)", "--user", "ada"])
        #expect(await session.expect("Password for ada:"))
        session.type("wrong password\r")
        #expect(await session.expect("auth.invalid_credentials"))
        let exited = await session.waitForExit()
        #expect(exited, "warbler chat did not exit after a wrong password: \(session.drain())")
        if exited { #expect(session.process.terminationStatus != 0) }
        node.stop()
    }
}
