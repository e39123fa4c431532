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
