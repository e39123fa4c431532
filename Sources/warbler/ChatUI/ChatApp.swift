import Foundation
import WarblerClient
import WarblerWire

/// The interactive terminal chat: a conversation list with unread counts, and conversations with their recent
/// history, live messages, receipts and typing. Everything happens on one loop that consumes key presses and
/// client events in order.
final class ChatApp: @unchecked Sendable {
    enum Input: Sendable {
        case key(Key)
        case event(ClientEvent)
        case typingExpired(String)
    }

    private enum Screen {
        case list([Warbler_V1_Conversation])
        case conversation(Warbler_V1_Conversation)
    }

    private let client: WarblerClient
    private let user: String
    private let terminal: Terminal
    private var screen = Screen.list([])
    private var line = ""
    private var typingSentFor: String?
    private var lastKeystroke = Date.distantPast
    private var conversations: [String: Warbler_V1_Conversation] = [:]
    private let inputs: AsyncStream<Input>
    private let sink: AsyncStream<Input>.Continuation

    init(client: WarblerClient, user: String, terminal: Terminal) {
        self.client = client
        self.user = user
        self.terminal = terminal
        (inputs, sink) = AsyncStream.makeStream(of: Input.self)
    }

    func run() async {
        let sink = self.sink
        terminal.keys { sink.yield(.key($0)) }
        let events = client.events
        let forwarder = Task {
            for await event in events { sink.yield(.event(event)) }
        }
        defer { forwarder.cancel() }
        terminal.enterRawMode()
        defer { terminal.restore() }
        await showList()
        for await input in inputs {
            switch input {
            case .key(let key):
                if await !handle(key) { return }
            case .event(let event):
                show(event)
            case .typingExpired(let conversationID):
                if typingSentFor == conversationID, Date().timeIntervalSince(lastKeystroke) >= 3.5 {
                    typingSentFor = nil
                    try? await client.setTyping(false, in: conversationID)
                }
            }
        }
    }

    // MARK: - Output

    private var prompt: String {
        switch screen {
        case .list: return "> "
        case .conversation(let conversation): return "[\(title(of: conversation))] > "
        }
    }

    /// Prints lines above the prompt, then redraws the prompt with what is being typed.
    private func emit(_ lines: [String]) {
        var text = "\r\u{1B}[2K"
        for line in lines { text += line + "\n" }
        text += prompt + line
        terminal.write(text)
    }

    private func title(of conversation: Warbler_V1_Conversation) -> String {
        if conversation.kind == .direct { return conversation.members.first { $0 != user } ?? conversation.title }
        return conversation.title
    }

    private func time(_ milliseconds: Int64) -> String {
        let formatter = DateFormatter()
        formatter.dateFormat = "HH:mm"
        return formatter.string(from: Date(timeIntervalSince1970: Double(milliseconds) / 1000))
    }

    private func render(_ message: Warbler_V1_ChatMessage) -> String {
        let who = message.sender == user ? "you" : message.sender
        let text = String(decoding: message.payload, as: UTF8.self)
        return
            "  \(time(message.serverTimeUnixMs)) \(who.padding(toLength: max(who.count, 8), withPad: " ", startingAt: 0)) \(text)"
    }

    private func showList() async {
        do {
            let list = try await client.listConversations()
            for conversation in list { conversations[conversation.conversationID] = conversation }
            screen = .list(list)
            var lines = ["", "Conversations"]
            if list.isEmpty { lines.append("  (none yet — start one with /dm NAME or /group TITLE NAME…)") }
            for (position, conversation) in list.enumerated() {
                let unread = conversation.unreadCount > 0 ? "\(conversation.unreadCount) unread" : ""
                var last = ""
                if conversation.hasLastMessage {
                    let sender = conversation.lastMessage.sender == user ? "you" : conversation.lastMessage.sender
                    last = "\(sender): \(String(decoding: conversation.lastMessage.payload, as: UTF8.self))"
                }
                let name = title(of: conversation).padding(toLength: 20, withPad: " ", startingAt: 0)
                lines.append(
                    "  \(position + 1). \(name) \(unread.padding(toLength: 10, withPad: " ", startingAt: 0)) \(last)"
                )
            }
            lines.append("Type a number to open · /dm NAME · /group TITLE NAME… · /help · /quit")
            emit(lines)
        } catch {
            emit(["! \(error)"])
        }
    }

    private func open(_ conversation: Warbler_V1_Conversation) async {
        screen = .conversation(conversation)
        conversations[conversation.conversationID] = conversation
        var lines = ["", "── \(title(of: conversation)) · \(conversation.members.joined(separator: ", ")) ──"]
        do {
            let page = try await client.history(of: conversation.conversationID, before: 0, limit: 20)
            if page.more { lines.append("  … older messages: /older") }
            lines += page.messages.map(render)
            if page.messages.isEmpty { lines.append("  (no messages yet)") }
            if let last = page.messages.last { try? await client.markRead(conversation.conversationID, upTo: last.seq) }
        } catch {
            lines.append("! \(error)")
        }
        lines.append("Type and press Enter to send · /back · /add NAME · /leave · /older · /quit")
        emit(lines)
    }

    private func show(_ event: ClientEvent) {
        switch event {
        case .message(let message):
            if case .conversation(let open) = screen, open.conversationID == message.conversationID {
                emit([render(message)])
                if message.sender != user {
                    let seq = message.seq
                    let id = message.conversationID
                    Task { try? await self.client.markRead(id, upTo: seq) }
                }
            } else if message.sender != user {
                let name = conversations[message.conversationID].map(title) ?? "a conversation"
                emit(["  · new message in \(name) from \(message.sender)"])
            }
        case .receipt(let receipt):
            if case .conversation(let open) = screen, open.conversationID == receipt.conversationID {
                emit(["  · \(receipt.user) read up to #\(receipt.readSeq)"])
            }
        case .typing(let typing):
            if case .conversation(let open) = screen, open.conversationID == typing.conversationID {
                emit(["  · \(typing.user) \(typing.typing ? "is typing…" : "stopped typing")"])
            }
        case .presence(let presence):
            emit(["  · \(presence.user) is \(presence.online ? "online" : "offline")"])
        case .conversation(let push):
            let known = conversations[push.conversation.conversationID]
            conversations[push.conversation.conversationID] = push.conversation
            let name = title(of: push.conversation)
            if push.removed {
                emit(["  · you are no longer in \(name)"])
            } else if known == nil {
                // On the list, the new conversation takes the next number (the list on screen stays as it is).
                if case .list(var list) = screen {
                    list.append(push.conversation)
                    screen = .list(list)
                    emit(["  · new conversation: \(name) — type \(list.count) to open it"])
                } else {
                    emit(["  · new conversation: \(name)"])
                }
            } else if known?.members != push.conversation.members {
                emit(["  · \(name) now has \(push.conversation.members.joined(separator: ", "))"])
            }
        case .disconnected(let reason):
            emit(["! disconnected: \(reason)"])
        case .reconnected:
            emit(["  · reconnected"])
        }
    }

    // MARK: - Input

    /// Returns false to quit.
    private func handle(_ key: Key) async -> Bool {
        switch key {
        case .interrupt, .endOfInput:
            if key == .endOfInput && !line.isEmpty { return true }
            terminal.write("\n")
            return false
        case .escape:
            return true
        case .backspace:
            if !line.isEmpty {
                line.removeLast()
                terminal.write("\u{8} \u{8}")
            }
            return true
        case .character(let character):
            line.append(character)
            terminal.write(String(character))
            await noteTyping()
            return true
        case .enter:
            let text = line.trimmingCharacters(in: .whitespaces)
            line = ""
            terminal.write("\n")
            return await submit(text)
        }
    }

    private func noteTyping() async {
        guard case .conversation(let conversation) = screen, !line.hasPrefix("/") else { return }
        lastKeystroke = Date()
        let id = conversation.conversationID
        if typingSentFor != id {
            typingSentFor = id
            try? await client.setTyping(true, in: id)
        }
        let sink = self.sink
        Task {
            try? await Task.sleep(nanoseconds: 4_000_000_000)
            sink.yield(.typingExpired(id))
        }
    }

    private func submit(_ text: String) async -> Bool {
        if text.isEmpty {
            emit([])
            return true
        }
        let words = text.split(separator: " ").map(String.init)
        switch words[0] {
        case "/quit", "/exit":
            return false
        case "/help":
            emit([
                "  /dm NAME              open (or start) a direct conversation",
                "  /group TITLE NAME…    start a group",
                "  /back                 back to the list", "  /add NAME             add someone to this group",
                "  /leave                leave this group", "  /older                earlier messages",
                "  /quit                 leave the chat",
            ])
        case "/back", "/list":
            await showList()
        case "/dm" where words.count == 2:
            do { await open(try await client.createDirect(with: words[1])) } catch { emit(["! \(error)"]) }
        case "/group" where words.count >= 2:
            do {
                await open(try await client.createGroup(title: words[1], members: Array(words.dropFirst(2))))
            } catch {
                emit(["! \(error)"])
            }
        default:
            switch screen {
            case .list(let list):
                if let number = Int(text), list.indices.contains(number - 1) {
                    await open(list[number - 1])
                } else {
                    emit(["! type a number from the list, or /help"])
                }
            case .conversation(let conversation):
                await conversationCommand(text, words: words, in: conversation)
            }
        }
        return true
    }

    private func conversationCommand(_ text: String, words: [String], in conversation: Warbler_V1_Conversation) async {
        let id = conversation.conversationID
        do {
            switch words[0] {
            case "/add" where words.count >= 2:
                _ = try await client.addMembers(Array(words.dropFirst()), to: id)
                emit(["  · added \(words.dropFirst().joined(separator: ", "))"])
            case "/leave":
                try await client.leave(id)
                await showList()
            case "/older":
                let oldest = try await client.history(of: id, before: 0, limit: 20).messages.first?.seq ?? 0
                let page = try await client.history(of: id, before: oldest, limit: 20)
                emit(page.messages.isEmpty ? ["  (nothing older)"] : page.messages.map(render))
            default:
                if text.hasPrefix("/") {
                    emit(["! unknown command \(words[0]) — /help lists them"])
                    return
                }
                if typingSentFor == id {
                    typingSentFor = nil
                    try? await client.setTyping(false, in: id)
                }
                // The message appears when the node delivers it (with its seq), like everyone else's.
                _ = try await client.send(Data(text.utf8), to: id)
            }
        } catch {
            emit(["! \(error)"])
        }
    }
}
