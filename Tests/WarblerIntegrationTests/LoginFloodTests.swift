import Foundation
import Testing
import WarblerClient
import WarblerWire

/// Password checks are deliberately slow, so wrong passwords are a cheap way to burn a node's CPU: a node limits
/// failed logins per source address, bounds the checks waiting, refuses the rest at once with a typed
/// `node.rate_limited` (answered late, to slow the flood), and keeps serving everyone else.
@Suite(.serialized)
struct LoginFloodTests {
    static let password = "correct horse battery staple"
    /// The node's password-check places (17 per verifying thread, half the cores) and one address's share.
    static let capacity = max(1, ProcessInfo.processInfo.activeProcessorCount / 2) * 17
    static let perAddress = max(2, capacity / 4)

    /// The outcome of each login answered on `raw`, by request id, reading until `count` have been answered (a
    /// minute at most; without blocking a thread, which the other suites' tasks need meanwhile).
    static func answers(_ count: Int, on raw: RawConnection) async -> [UInt64: (Warbler_V1_ServerFrame, Date)] {
        var answers: [UInt64: (Warbler_V1_ServerFrame, Date)] = [:]
        while answers.count < count, let frame = await raw.nextFrame() {
            if frame.requestID != 0 { answers[frame.requestID] = (frame, Date()) }
        }
        return answers
    }

    static func error(_ frame: Warbler_V1_ServerFrame) -> Warbler_V1_Error? {
        if case .error(let error) = frame.body { return error }
        return nil
    }

    static func sendLogin(_ raw: RawConnection, id: UInt64, user: String, password: String) {
        raw.request(
            id,
            .login(
                .with {
                    $0.user = user
                    $0.password = password
                }
            )
        )
    }

    @Test func oneAddressGuessingPasswordsIsHeldToItsBudgetAndOthersLogIn() async throws {
        let node = try NodeProcess()
        for user in ["ada", "bob"] { try await node.addUser(user, password: Self.password) }
        // Three failures a minute (fewer than the four places one address may hold), and the attacker's connection
        // kept open however slowly the debug build checks.
        node.serveArguments = ["--failed-logins-per-address", "3", "--login-timeout", "300"]
        try await node.start()
        defer { node.stop() }

        // Twelve wrong logins at once from 127.0.0.2, each for another name (so no name is locked out), then the
        // right password for bob: three are checked and fail, the other ten are refused unchecked, a second late —
        // bob's too. The budget is decided as they arrive, so however long the checks take does not matter.
        let attacker = try RawConnection(port: node.port, from: "127.0.0.2")
        attacker.handshake()
        let sent = Date()
        for index in 0..<12 {
            Self.sendLogin(attacker, id: UInt64(10 + index), user: "guess-\(index)", password: "wrong")
        }
        Self.sendLogin(attacker, id: 30, user: "bob", password: Self.password)
        let answers = await Self.answers(13, on: attacker)
        #expect(answers.count == 13)
        let checked = answers.values.filter { Self.error($0.0)?.code == ErrorCode.invalidCredentials.rawValue }
        let refused = answers.values.filter { Self.error($0.0)?.code == ErrorCode.rateLimited.rawValue }
        #expect(checked.count == 3)
        #expect(refused.count == 10)
        for (frame, answered) in refused {
            #expect(Self.error(frame)?.message.contains("from this address") == true)
            #expect(answered.timeIntervalSince(sent) >= 0.9)
        }
        #expect(Self.error(answers[30]?.0 ?? .init())?.code == ErrorCode.rateLimited.rawValue, "bob's was not checked")

        // Everyone else logs in and chats as usual.
        let (ada, _) = try await node.login("ada", password: Self.password)
        let conversation = try await ada.createDirect(with: "bob")
        let ack = try await ada.send(Data("still here".utf8), to: conversation.conversationID)
        #expect(ack.seq == 1)
        await ada.close()

        // A session opened elsewhere resumes from the refused address: resumes are not password checks.
        let elsewhere = try RawConnection(port: node.port)
        elsewhere.handshake()
        Self.sendLogin(elsewhere, id: 2, user: "bob", password: Self.password)
        guard case .loggedIn(let loggedIn) = await Self.answers(1, on: elsewhere)[2]?.0.body else {
            Issue.record("bob could not log in from 127.0.0.1")
            return
        }
        let resumer = try RawConnection(port: node.port, from: "127.0.0.2")
        resumer.handshake()
        resumer.request(5, .resumeSession(.with { $0.sessionToken = loggedIn.sessionToken }))
        guard case .loggedIn(let resumed) = await Self.answers(1, on: resumer)[5]?.0.body else {
            Issue.record("the session did not resume from 127.0.0.2")
            return
        }
        #expect(resumed.userName == "bob")

        // Ten refusals, one warning.
        let warnings = node.log.components(separatedBy: "refusing password logins without checking them").count - 1
        #expect(warnings == 1)
    }

    @Test func aFloodBeyondThePasswordChecksIsRefusedAtOnceAndEachAddressGetsItsShare() async throws {
        let node = try NodeProcess()
        for user in ["ada", "bob"] { try await node.addUser(user, password: Self.password) }
        // No per-address budget: the flood might come from many addresses. The attackers' connections stay open
        // however slowly the debug build checks.
        node.serveArguments = ["--failed-logins-per-address", "0", "--login-timeout", "300"]
        try await node.start()
        defer { node.stop() }

        // Wrong logins at once from several addresses: more from each than one address may have checked at once
        // (a quarter of the places), and more from all than all the places (on two cores: ten from each of six).
        let (capacity, perAddress) = (Self.capacity, Self.perAddress)
        let each = perAddress + 6
        let sources = (0..<(capacity / perAddress + 2)).map { "127.0.0.\(3 + $0)" }
        var attackers: [RawConnection] = []
        for source in sources {
            let attacker = try RawConnection(port: node.port, from: source)
            attacker.handshake()
            attackers.append(attacker)
        }
        for (number, attacker) in attackers.enumerated() {
            for index in 0..<each {
                Self.sendLogin(attacker, id: UInt64(10 + index), user: "guess-\(number)-\(index)", password: "wrong")
            }
        }
        // While the checks run, a chat user still logs in (the SDK retries while the places are all taken).
        let (ada, _) = try await node.login("ada", password: Self.password)

        var checked = 0
        var busy = 0
        for attacker in attackers {
            let answers = await Self.answers(each, on: attacker)
            #expect(answers.count == each)
            let errors = answers.values.compactMap { Self.error($0.0) }
            let fromHere = errors.filter { $0.code == ErrorCode.invalidCredentials.rawValue }.count
            let refused = errors.filter { $0.code == ErrorCode.rateLimited.rawValue && $0.message.contains("busy") }
            #expect(fromHere + refused.count == each)
            // All ten arrive within a moment; one check may end while the last are read.
            #expect(fromHere <= perAddress + 1, "one address holds at most its share of the places")
            checked += fromHere
            busy += refused.count
        }
        #expect(checked >= capacity - 1, "every place was used (ada's login may have taken one)")
        #expect(checked <= capacity + sources.count)
        #expect(busy == each * sources.count - checked)

        let conversation = try await ada.createDirect(with: "bob")
        #expect(try await ada.send(Data("hi".utf8), to: conversation.conversationID).seq == 1)
        await ada.close()

        // Stopped with checks waiting, the node fails them while its connections' event loops still run (it
        // used to complete them on loops already shut down, one error line each), and exits.
        for index in 0..<perAddress {
            Self.sendLogin(attackers[0], id: UInt64(100 + index), user: "late-\(index)", password: "wrong")
        }
        try await Task.sleep(nanoseconds: 100_000_000)
        node.stop()
        #expect(!node.log.contains("Cannot schedule tasks"), "\(node.log.suffix(2_000))")
    }

    @Test func aLoginStillBeingCheckedAtTheLoginDeadlineIsAnsweredFirst() async throws {
        let node = try NodeProcess()
        try await node.addUser("ada", password: Self.password)
        node.serveArguments = ["--failed-logins-per-address", "0", "--login-timeout", "1"]
        try await node.start()
        defer { node.stop() }
        let perAddress = Self.perAddress

        // Four addresses fill their share of the places with wrong logins: a check takes most of a second on a
        // debug build, so these last several seconds.
        var attackers: [RawConnection] = []
        for number in 0..<4 {
            let attacker = try RawConnection(port: node.port, from: "127.0.0.\(3 + number)")
            attacker.handshake()
            for index in 0..<perAddress {
                Self.sendLogin(attacker, id: UInt64(10 + index), user: "guess-\(number)-\(index)", password: "wrong")
            }
            attackers.append(attacker)
        }
        // Ada logs in at once, well within her second; her check comes on her address's turn, after one check of
        // each of the four (the deadline passes meanwhile). No pause between connecting and sending: a pause is
        // a suspension, and on a machine busy with other suites it may resume after the deadline.
        let ada = try RawConnection(port: node.port, from: "127.0.0.2")
        let opened = Date()
        ada.handshake()
        Self.sendLogin(ada, id: 5, user: "ada", password: Self.password)
        let sent = Date().timeIntervalSince(opened)
        let answer = await Self.answers(1, on: ada)[5]
        guard case .loggedIn = answer?.0.body else {
            Issue.record(
                "ada's login (sent \(sent) s after connecting) was not answered LoggedIn: \(String(describing: answer?.0))"
            )
            return
        }
        #expect(answer!.1.timeIntervalSince(opened) > 1, "the check ended after the deadline")
        // Logged in, the connection stays.
        ada.request(6, .ping(.with { $0.nonce = 7 }))
        #expect(await Self.answers(1, on: ada)[6] != nil)

        // Every wrong login is answered, then the connection that failed them is closed for its deadline.
        for attacker in attackers {
            let answers = await Self.answers(perAddress, on: attacker)
            #expect(answers.count == perAddress)
            #expect(answers.values.allSatisfy { Self.error($0.0)?.code == ErrorCode.invalidCredentials.rawValue })
            let closing = await attacker.nextFrame()
            #expect(Self.error(closing ?? .init())?.code == ErrorCode.loginTimeout.rawValue)
            #expect(await attacker.nextFrame() == nil, "closed")
        }
    }
}
