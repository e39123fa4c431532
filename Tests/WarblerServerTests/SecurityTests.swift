import Crypto
import Foundation
import Testing
import WarblerServer

struct PasswordHasherTests {
    @Test func aHashVerifiesOnlyItsPassword() throws {
        let hash = try PasswordHasher.hash("correct horse battery staple", costExponent: 10)
        #expect(String(decoding: hash, as: UTF8.self).hasPrefix("scrypt$10$8$1$"))
        #expect(PasswordHasher.verify("correct horse battery staple", against: hash))
        #expect(!PasswordHasher.verify("correct horse battery stapl", against: hash))
        #expect(!PasswordHasher.verify("", against: hash))
    }

    @Test func theSamePasswordHashesDifferentlyEachTime() throws {
        let a = try PasswordHasher.hash("same password", costExponent: 10)
        let b = try PasswordHasher.hash("same password", costExponent: 10)
        #expect(a != b)
        #expect(
            PasswordHasher.verify("same password", against: a) && PasswordHasher.verify("same password", against: b)
        )
    }

    @Test(arguments: [
        "", "scrypt$10$8$1$", "bcrypt$10$8$1$AAAA$BBBB", "scrypt$99$8$1$AAAA$BBBB", "scrypt$10$8$1$!!$??",
    ])
    func malformedHashesNeverMatch(_ text: String) {
        #expect(!PasswordHasher.verify("anything", against: Array(text.utf8)))
    }
}

struct SessionStoreTests {
    @Test func tokensResolveUntilTheyExpireOrAreRevoked() {
        let store = SessionStore(lifetimeSeconds: 60)
        let now = Date()
        let session = store.issue(userID: "ada", now: now)
        #expect(session.token.count == 64)
        #expect(store.resolve(session.token, now: now.addingTimeInterval(30))?.userID == "ada")
        #expect(store.resolve(session.token, now: now.addingTimeInterval(61)) == nil)
        let other = store.issue(userID: "bob", now: now)
        store.revoke(other.token)
        #expect(store.resolve(other.token, now: now) == nil)
        #expect(store.resolve("not a token") == nil)
        #expect(store.issue(userID: "ada").token != store.issue(userID: "ada").token)
    }

    @Test func sessionsTheMetadataGroupEndsAreForgottenByTheirTokenHash() {
        let store = SessionStore(lifetimeSeconds: 60)
        let now = Date()
        let recorded = Session(token: Session.newToken(), userID: "ada", expiresAt: now + 60, recorded: true)
        store.remember(recorded, now: now)
        let other = store.issue(userID: "bob", now: now)
        #expect(store.resolve(recorded.token, now: now)?.recorded == true)
        #expect(other.recorded == false)
        // The hash is the SHA-256 of the token's characters, as the metadata group stores it.
        #expect(recorded.tokenHash == Array(SHA256.hash(data: Array(recorded.token.utf8))))
        store.revoke(hashes: [Data(recorded.tokenHash), Data(repeating: 7, count: 32)])
        #expect(store.resolve(recorded.token, now: now) == nil)
        #expect(store.resolve(other.token, now: now)?.userID == "bob")
        #expect(store.count == 1)
    }

    @Test func expiredSessionsAreSweptAsNewOnesArrive() {
        let store = SessionStore(lifetimeSeconds: 60)
        let now = Date()
        for _ in 0..<1000 { _ = store.issue(userID: "ada", now: now) }
        // 1,024 sessions later, a minute on: the sweep drops the first thousand without anyone resolving them.
        for _ in 0..<24 { _ = store.issue(userID: "bob", now: now + 61) }
        #expect(store.count == 24)
    }

    @Test(arguments: [
        (String(repeating: "ab", count: 32), true), (String(repeating: "AB", count: 32), false),
        (String(repeating: "a", count: 63), false), (String(repeating: "g", count: 64), false), ("", false),
    ])
    func onlyWellFormedTokensAreLookedUp(_ token: String, _ wellFormed: Bool) {
        #expect(Session.isWellFormed(token) == wellFormed)
        #expect(Session.isWellFormed(Session.newToken()))
    }
}

struct LoginThrottleTests {
    @Test func aNameIsLockedAfterTooManyFailuresAndReleasedLater() {
        let throttle = LoginThrottle(maxFailures: 3, lockoutSeconds: 60)
        let now = Date()
        for _ in 0..<2 { throttle.recordFailure("ada", now: now) }
        #expect(!throttle.isLocked("ada", now: now))
        throttle.recordFailure("ada", now: now)
        #expect(throttle.isLocked("ada", now: now))
        #expect(!throttle.isLocked("bob", now: now))
        #expect(!throttle.isLocked("ada", now: now.addingTimeInterval(61)))
    }

    @Test func aSuccessClearsFailures() {
        let throttle = LoginThrottle(maxFailures: 2, lockoutSeconds: 60)
        throttle.recordFailure("ada")
        throttle.recordSuccess("ada")
        throttle.recordFailure("ada")
        #expect(!throttle.isLocked("ada"))
    }
}

struct NodeConfigurationTests {
    @Test func defaultsAreValid() throws {
        let configuration = NodeConfiguration()
        try configuration.validate()
        #expect(configuration.network.clientPort == 7400)
        #expect(configuration.network.webSocketPort == 7401)
        #expect(configuration.network.host == "127.0.0.1")
        #expect(configuration.limits.maxFrameBytes == 1 << 20)
    }

    @Test(arguments: ["port", "same-ports", "host", "session", "cost", "node"])
    func invalidFieldsAreRefused(_ field: String) {
        var configuration = NodeConfiguration()
        switch field {
        case "port": configuration.network.clientPort = 70000
        case "same-ports": configuration.network.webSocketPort = configuration.network.clientPort
        case "host": configuration.network.host = ""
        case "session": configuration.security.sessionLifetimeSeconds = 1
        case "cost": configuration.security.scryptCostExponent = 40
        default: configuration.nodeID = 0
        }
        #expect(throws: (any Error).self) { try configuration.validate() }
    }
}
