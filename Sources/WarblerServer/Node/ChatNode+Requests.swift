import Foundation
import NIOCore
import Synchronization
import WarblerChat
import WarblerCluster
import WarblerWire

extension ChatNode {
    // MARK: - Authentication

    /// Checks a password login from `address` (scrypt is deliberately slow: ``PasswordVerifier``). Refused
    /// with `node.rate_limited`, without hashing, when the address has no failed logins left
    /// (``AddressLoginBudget``) or the node's password checks are all taken.
    func login(
        _ login: Warbler_V1_Login,
        from address: SocketAddress?,
        on eventLoop: any EventLoop
    ) -> EventLoopFuture<Result<(Session, String), WireError>> {
        // Refusals are answered late — a second, or a quarter of one when the node is only busy — so that a
        // client that waits for each answer (most floods do) is slowed to a few attempts a second per
        // connection, at the cost of a timer here.
        guard loginBudget.take(address) else {
            return refuseLogin(
                on: eventLoop,
                "too many failed logins from this address; try again in a minute",
                from: address,
                after: .seconds(1)
            )
        }
        guard let ticket = verifier.reserve(address) else {
            loginBudget.giveBack(address)
            return refuseLogin(
                on: eventLoop,
                "the node is busy checking other logins; try again in a moment",
                from: address,
                after: .milliseconds(250)
            )
        }
        // Accounts live in the metadata group: every login first waits for this replica of it to be current
        // (ReadIndex; on a node still joining, for the replica to exist), so any node accepts every account
        // created before the login began. Every name pays the same wait — whether the barrier succeeds or not —
        // so its duration says nothing about which names exist. When no leader of the metadata group can be
        // reached (this node is cut off), the local replica answers: known accounts can still log in and read,
        // with a session this node alone knows.
        let current = eventLoop.makePromise(of: Bool.self)
        current.completeWithTask { [host, logger] in
            do {
                try await host.readBarrier(group: 0)
                return true
            } catch {
                logger.notice(
                    "login checked against a metadata replica that may be stale",
                    metadata: ["error": "\(error)"]
                )
                return false
            }
        }
        return current.futureResult.flatMap { [self] current in
            verifier.run(ticket, on: eventLoop) { [self] in try checkCredentials(login) }.flatMap { [self] checked in
                switch checked {
                case .failure(let error): return eventLoop.makeSucceededFuture(.failure(error))
                case .success(let account):
                    loginBudget.giveBack(address)
                    return startSession(for: account, recorded: current, on: eventLoop)
                }
            }
        }
    }

    /// Opens a session for `account`. It is recorded in the metadata group (under its token's hash) before the
    /// login is answered, so that any node resumes it, after a restart too, and a logout ends it everywhere —
    /// unless `recorded` is false (no leader of the metadata group was reachable) or recording it fails: then
    /// this node alone knows the session.
    private func startSession(
        for account: AccountRecord,
        recorded: Bool,
        on eventLoop: any EventLoop
    ) -> EventLoopFuture<Result<(Session, String), WireError>> {
        guard recorded else {
            return eventLoop.makeSucceededFuture(.success((sessions.issue(userID: account.userID), account.name)))
        }
        let session = Session(
            token: Session.newToken(),
            userID: account.userID,
            expiresAt: Date().addingTimeInterval(sessions.lifetime),
            recorded: true
        )
        let started = eventLoop.makePromise(of: Result<(Session, String), WireError>.self)
        started.completeWithTask { [self] in
            do {
                let outcome = try await run(
                    .startSession(
                        .with {
                            $0.tokenHash = Data(session.tokenHash)
                            $0.userID = account.userID
                            $0.expiresUnixMs = Int64(session.expiresAt.timeIntervalSince1970 * 1000)
                        }
                    )
                )
                switch outcome {
                case .sessionStarted:
                    sessions.remember(session)
                    return .success((session, account.name))
                case .refused(let error): return .failure(WireError(error.code, error.message))
                default: return .failure(WireError(.internalError, "unexpected outcome \(outcome)"))
                }
            } catch {
                logger.notice(
                    "a login's session is known to this node only: the metadata group did not record it",
                    metadata: ["user": "\(account.userID)", "error": "\(error)"]
                )
                var local = session
                local.recorded = false
                sessions.remember(local)
                return .success((local, account.name))
            }
        }
        return started.futureResult
    }

    /// Answers a login with `node.rate_limited` after `delay`, without checking it; a warning says so at most
    /// every 10 s.
    private func refuseLogin(
        on eventLoop: any EventLoop,
        _ reason: String,
        from address: SocketAddress?,
        after delay: TimeAmount
    ) -> EventLoopFuture<Result<(Session, String), WireError>> {
        let refused = refusedLogins.add(1, ordering: .relaxed).newValue
        if refusedLoginReports.shouldReport() {
            logger.warning(
                "refusing password logins without checking them",
                metadata: [
                    "reason": "\(reason)", "address": "\(address.map { "\($0)" } ?? "?")",
                    "logins.refused": "\(refused)",
                ]
            )
        }
        let refusal = Result<(Session, String), WireError>.failure(WireError(.rateLimited, reason))
        return eventLoop.scheduleTask(in: delay) { refusal }.futureResult
    }

    private func checkCredentials(_ login: Warbler_V1_Login) throws -> Result<AccountRecord, WireError> {
        let name = login.user
        if throttle.isLocked(name) {
            return .failure(WireError(.lockedOut, "too many failed logins; try again later"))
        }
        // Hash even for unknown users, so that timing does not reveal which names exist.
        let account = try queries.account(named: name)
        let hash =
            account.map { [UInt8]($0.passwordHash) }
            ?? Self.decoyHash(costExponent: configuration.security.scryptCostExponent)
        let valid = PasswordHasher.verify(login.password, against: hash) && account != nil
        guard valid, let account else {
            throttle.recordFailure(name)
            logger.notice("login failed", metadata: ["user": "\(name)"])
            return .failure(WireError(.invalidCredentials, "wrong user name or password"))
        }
        throttle.recordSuccess(name)
        return .success(account)
    }

    /// Hashes of a random password, one per scrypt cost, verified against for unknown names: as slow to check
    /// as the node's own accounts' hashes.
    private static let decoyHashes = Mutex<[Int: [UInt8]]>([:])

    static func decoyHash(costExponent: Int) -> [UInt8] {
        if let hash = decoyHashes.withLock({ $0[costExponent] }) { return hash }
        let hash = (try? PasswordHasher.hash(UUID().uuidString, costExponent: costExponent)) ?? []
        return decoyHashes.withLock { $0[costExponent, default: hash] }
    }

    /// Resumes the session of `token`: one this node serves, or one the metadata group recorded (logged in on
    /// another node, or before this node restarted), read from this node's replica. Never hashes a password.
    func resume(_ token: String, on eventLoop: any EventLoop) -> EventLoopFuture<Result<(Session, String), WireError>> {
        let expired = Result<(Session, String), WireError>.failure(
            WireError(.sessionExpired, "the session expired; log in again")
        )
        // A session this node alone knows is in memory only; a recorded one is looked up in the replica even when
        // held here, so that a logout this node learnt of only through a snapshot still ends it.
        if let session = sessions.resolve(token), !session.recorded {
            return eventLoop.makeSucceededFuture(.success((session, session.userID)))
        }
        guard Session.isWellFormed(token) else { return eventLoop.makeSucceededFuture(expired) }
        return threadPool.runIfActive(eventLoop: eventLoop) { [queries, sessions] in
            let hash = Session.hash(token)
            guard let record = try queries.session(tokenHash: hash) else { return expired }
            let expiresAt = Date(timeIntervalSince1970: Double(record.expiresUnixMs) / 1000)
            guard expiresAt > Date(), let account = try queries.account(id: record.userID) else { return expired }
            let session = Session(
                token: token,
                tokenHash: hash,
                userID: record.userID,
                expiresAt: expiresAt,
                recorded: true
            )
            sessions.remember(session)
            // A logout applied between the read above and `remember` revoked nothing here yet: look again.
            guard try queries.session(tokenHash: hash) != nil else {
                sessions.revoke(token)
                return expired
            }
            return .success((session, account.name))
        }.flatMapErrorThrowing { error in
            .failure(WireError(.unavailable, "the session cannot be read now: \(error)"))
        }
    }

    /// Ends `session`: in the metadata group first when it is recorded there (so that no node resumes it
    /// afterwards), then here. Fails, ending nothing, when the metadata group cannot record the logout.
    func endSession(_ session: Session, on eventLoop: any EventLoop) -> EventLoopFuture<Result<Void, WireError>> {
        guard session.recorded else {
            sessions.revoke(session.token)
            // Its recording may have timed out here and still committed: end it there too, if it is there.
            Task { [self] in _ = try? await run(.endSession(.with { $0.tokenHash = Data(session.tokenHash) })) }
            return eventLoop.makeSucceededFuture(.success(()))
        }
        let ended = eventLoop.makePromise(of: Result<Void, WireError>.self)
        ended.completeWithTask { [self] in
            do {
                let outcome = try await run(.endSession(.with { $0.tokenHash = Data(session.tokenHash) }))
                if case .refused(let error) = outcome { return .failure(WireError(error.code, error.message)) }
                sessions.revoke(session.token)
                return .success(())
            } catch {
                return .failure(
                    WireError(.unavailable, "the logout could not be recorded; the session goes on, retry: \(error)")
                )
            }
        }
        return ended.futureResult
    }

    // MARK: - Presence

    func sessionStarted(_ handle: ConnectionHandle) {
        guard registry.add(handle) else { return }
        announcePresence(of: handle.userID, online: true)
    }

    func sessionEnded(_ handle: ConnectionHandle) {
        guard registry.remove(handle) else { return }
        announcePresence(of: handle.userID, online: false)
    }

    /// Tells everyone who shares a conversation with `user` (and is online) that it came or went.
    private func announcePresence(of user: String, online: Bool) {
        threadPool.submit { [self] state in
            guard state == .active, let conversations = try? queries.conversations(of: user) else { return }
            var peers = Set(conversations.flatMap(\.conversation.members))
            peers.remove(user)
            var frame = Warbler_V1_ServerFrame()
            frame.presencePush = .with {
                $0.user = user
                $0.online = online
            }
            registry.push(frame, to: peers)
        }
    }

    // MARK: - Requests

    typealias Reply = @Sendable (Result<Warbler_V1_ServerFrame, WireError>) -> Void

    /// Serves one request of a logged-in user. `reply` is called exactly once, from any thread.
    func handle(
        _ request: Warbler_V1_ClientFrame.OneOf_Body,
        from user: String,
        connection: ConnectionHandle,
        on eventLoop: any EventLoop,
        reply: @escaping Reply
    ) {
        switch request {
        case .send(let send):
            // Cheap checks here; membership is checked when the command is applied.
            if send.payload.isEmpty { return reply(.failure(WireError(.invalidArgument, "payload must not be empty"))) }
            if send.payload.count > configuration.limits.maxPayloadBytes {
                return reply(
                    .failure(
                        WireError(
                            .payloadTooLarge,
                            "payload of \(send.payload.count) bytes exceeds \(configuration.limits.maxPayloadBytes)"
                        )
                    )
                )
            }
            propose(
                .postMessage(
                    .with {
                        $0.conversationID = send.conversationID
                        $0.sender = user
                        $0.clientMessageID = send.clientMessageID
                        $0.payload = send.payload
                    }
                ),
                for: user,
                reply: reply
            )
        case .markRead(let mark):
            propose(
                .markRead(
                    .with {
                        $0.conversationID = mark.conversationID
                        $0.user = user
                        $0.seq = mark.seq
                    }
                ),
                for: user,
                reply: reply
            )
        case .createGroup(let create):
            proposeAfterCheckingAccounts(
                create.members,
                on: eventLoop,
                for: user,
                reply: reply,
                .createConversation(
                    .with {
                        $0.conversationID = Self.newConversationID()
                        $0.kind = .group
                        $0.title = create.title
                        $0.creator = user
                        $0.members = create.members
                    }
                )
            )
        case .addMembers(let add):
            proposeAfterCheckingAccounts(
                add.members,
                on: eventLoop,
                for: user,
                reply: reply,
                .addMembers(
                    .with {
                        $0.conversationID = add.conversationID
                        $0.actor = user
                        $0.members = add.members
                    }
                )
            )
        case .removeMember(let remove):
            propose(
                .removeMember(
                    .with {
                        $0.conversationID = remove.conversationID
                        $0.actor = user
                        $0.member = remove.member
                    }
                ),
                for: user,
                answerDone: true,
                reply: reply
            )
        case .leaveConversation(let leave):
            propose(
                .removeMember(
                    .with {
                        $0.conversationID = leave.conversationID
                        $0.actor = user
                        $0.member = user
                    }
                ),
                for: user,
                answerDone: true,
                reply: reply
            )
        case .createDirect(let direct):
            let id = Self.directConversationID(user, direct.user)
            read(on: eventLoop, reply: reply) { [self] in
                guard try queries.account(named: direct.user) != nil else {
                    throw WireError(.userNotFound, "no user \(direct.user)")
                }
                if let existing = try queries.conversation(id: id, member: user) {
                    return try conversationFrame(existing, for: user)
                }
                return nil
            } then: { [self] in
                propose(
                    .createConversation(
                        .with {
                            $0.conversationID = id
                            $0.kind = .direct
                            $0.creator = user
                            $0.members = [direct.user]
                        }
                    ),
                    for: user,
                    reply: reply
                )
            }
        case .setTyping(let typing):
            read(on: eventLoop, reply: reply) { [self] in
                guard let conversation = try queries.conversation(id: typing.conversationID, member: user) else {
                    throw WireError(.conversationNotFound, "no conversation \(typing.conversationID)")
                }
                var push = Warbler_V1_ServerFrame()
                push.typingPush = .with {
                    $0.conversationID = typing.conversationID
                    $0.user = user
                    $0.typing = typing.typing
                }
                registry.push(push, to: conversation.members.filter { $0 != user })
                return .with { $0.done = .init() }
            }
        case .listConversations:
            read(on: eventLoop, reply: reply) { [self] in
                let list = try queries.conversations(of: user)
                return .with { $0.conversationList.conversations = list.map(ClientRecords.conversation) }
            }
        case .getHistory(let history):
            // Linearizable: the local replica first catches up with what its partition had committed; or, when
            // the client accepts it, bounded-stale from the local replica.
            readAfterBarrier(
                conversation: history.conversationID,
                maxStalenessMilliseconds: history.maxStalenessMs,
                on: eventLoop,
                reply: reply
            ) { [self] in
                guard try queries.conversation(id: history.conversationID, member: user) != nil else {
                    throw WireError(.conversationNotFound, "no conversation \(history.conversationID)")
                }
                let limit = Int(history.limit)
                let page =
                    history.afterSeq > 0
                    ? try queries.messages(conversation: history.conversationID, after: history.afterSeq, limit: limit)
                    : try queries.messages(
                        conversation: history.conversationID,
                        before: history.beforeSeq,
                        limit: limit
                    )
                return .with {
                    $0.historyPage = .with {
                        $0.conversationID = history.conversationID
                        $0.messages = page.messages.map(ClientRecords.message)
                        $0.more = page.hasMore
                    }
                }
            }
        case .sync(let sync):
            read(on: eventLoop, reply: reply) { [self] in try syncPage(sync, for: user) }
        case .hello, .login, .resumeSession, .logout, .ping:
            reply(.failure(WireError(.invalidArgument, "not valid here")))
        }
    }

    private func syncPage(_ sync: Warbler_V1_Sync, for user: String) throws -> Warbler_V1_ServerFrame {
        let budget = sync.limit == 0 ? 500 : min(Int(sync.limit), queries.limits.maxPageSize)
        var remaining = budget
        var page = Warbler_V1_SyncPage()
        for summary in try queries.conversations(of: user).reversed() {
            let id = summary.conversation.conversationID
            let known = sync.lastSeq[id]
            if known == nil { page.conversations.append(ClientRecords.conversation(summary)) }
            let after = known ?? 0
            guard summary.conversation.lastSeq > after else { continue }
            if remaining == 0 {
                page.more = true
                break
            }
            let messages = try queries.messages(conversation: id, after: after, limit: remaining)
            page.messages.append(contentsOf: messages.messages.map(ClientRecords.message))
            remaining -= messages.messages.count
            if messages.hasMore { page.more = true }
        }
        return .with { $0.syncPage = page }
    }

    private func conversationFrame(_ record: ConversationRecord, for user: String) throws -> Warbler_V1_ServerFrame {
        let readSeq = try queries.readMarker(user: user, conversation: record.conversationID) ?? 0
        let last =
            record.lastSeq > 0 ? try queries.message(conversation: record.conversationID, seq: record.lastSeq) : nil
        return .with { $0.conversation = ClientRecords.conversation(record, lastMessage: last, readSeq: readSeq) }
    }

    /// Waits for the conversation's partition to confirm this replica is current (ReadIndex), then reads.
    private func readAfterBarrier(
        conversation: String,
        maxStalenessMilliseconds: UInt32 = 0,
        on eventLoop: any EventLoop,
        reply: @escaping Reply,
        _ body: @escaping @Sendable () throws -> Warbler_V1_ServerFrame?
    ) {
        let group: UInt32
        do { group = try queries.group(of: conversation) } catch {
            return reply(.failure(WireError(.unavailable, "\(error)")))
        }
        Task { [self] in
            do {
                if maxStalenessMilliseconds > 0 {
                    try await host.boundedStaleRead(group: group, maxStaleness: .milliseconds(maxStalenessMilliseconds))
                } else {
                    try await host.readBarrier(group: group)
                }
            } catch {
                return reply(.failure(WireError(.unavailable, "cannot confirm a current read now: \(error)")))
            }
            read(on: eventLoop, reply: reply, body)
        }
    }

    /// Checks that every member has an account (accounts live in the metadata group), then proposes.
    private func proposeAfterCheckingAccounts(
        _ members: [String],
        on eventLoop: any EventLoop,
        for user: String,
        reply: @escaping Reply,
        _ body: ChatCommand.OneOf_Body
    ) {
        read(on: eventLoop, reply: reply) { [self] in
            for member in members where try queries.account(id: member) == nil {
                throw WireError(.userNotFound, "no user \(member)")
            }
            return nil
        } then: { [self] in
            propose(body, for: user, reply: reply)
        }
    }

    /// Runs `body` on the thread pool; a nil result runs `then` instead of replying.
    private func read(
        on eventLoop: any EventLoop,
        reply: @escaping Reply,
        _ body: @escaping @Sendable () throws -> Warbler_V1_ServerFrame?,
        then: (@Sendable () -> Void)? = nil
    ) {
        threadPool.runIfActive(eventLoop: eventLoop, body).whenComplete { result in
            switch result {
            case .success(let frame?): reply(.success(frame))
            case .success(nil): then?()
            case .failure(let error as WireError): reply(.failure(error))
            case .failure(let error as ChatError): reply(.failure(WireError(error.code, error.message)))
            case .failure(let error): reply(.failure(WireError(.internalError, "\(error)")))
            }
        }
    }

    /// Proposes a command and replies with what applying it produced.
    private func propose(
        _ body: ChatCommand.OneOf_Body,
        for user: String,
        answerDone: Bool = false,
        reply: @escaping Reply
    ) {
        let group: UInt32
        do { group = try self.group(of: body) } catch {
            return reply(.failure(WireError(.unavailable, "\(error)")))
        }
        host.submit(Self.encode(body), to: group) { [self] result in
            switch result {
            case .success(.refused(let error)): reply(.failure(WireError(error.code, error.message)))
            case .success where answerDone: reply(.success(.with { $0.done = .init() }))
            case .success(let outcome): reply(frame(for: outcome, user: user))
            case .failure(let error as ClusterError) where error.code == .outcomeUnknown:
                reply(
                    .failure(WireError(.unavailable, "the outcome is unknown; resend with the same client_message_id"))
                )
            case .failure(let error):
                reply(.failure(WireError(.unavailable, "the cluster cannot commit now: \(error)")))
            }
        }
    }

    private func frame(for outcome: ApplyOutcome, user: String) -> Result<Warbler_V1_ServerFrame, WireError> {
        switch outcome {
        case .posted(let message, let duplicate):
            return .success(
                .with {
                    $0.ack = .with {
                        $0.conversationID = message.conversationID
                        $0.clientMessageID = message.clientMessageID
                        $0.seq = message.seq
                        $0.serverTimeUnixMs = message.timeUnixMs
                        $0.duplicate = duplicate
                    }
                }
            )
        case .conversation(let record, _), .membersChanged(let record, _, _):
            do {
                return .success(try conversationFrame(record, for: user))
            } catch {
                return .success(
                    .with { $0.conversation = ClientRecords.conversation(record, lastMessage: nil, readSeq: 0) }
                )
            }
        case .readMarked, .accountCreated, .alreadyApplied, .unchanged, .sessionStarted, .sessionEnded:
            return .success(.with { $0.done = .init() })
        case .refused(let error):
            return .failure(WireError(error.code, error.message))
        }
    }

    static func newConversationID() -> String {
        var generator = SystemRandomNumberGenerator()
        return "c-"
            + (0..<12).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
    }
}
