import Crypto
import Foundation
import Synchronization

/// A logged-in session.
public struct Session: Sendable, Hashable {
    public let token: String
    /// The SHA-256 of the token, under which the metadata group records the session (never the token itself).
    public let tokenHash: [UInt8]
    public var userID: String
    public var expiresAt: Date
    /// True when the metadata group records it: any node resumes it, after a restart too, and a logout ends it
    /// everywhere. False for a session a node cut off from the metadata group's leader issued on its own: this
    /// node alone knows it, until it restarts.
    public var recorded: Bool

    /// A session of `token`, whose hash is `tokenHash` when the caller has it already.
    public init(token: String, tokenHash: [UInt8]? = nil, userID: String, expiresAt: Date, recorded: Bool) {
        self.token = token
        self.tokenHash = tokenHash ?? Self.hash(token)
        self.userID = userID
        self.expiresAt = expiresAt
        self.recorded = recorded
    }

    /// The SHA-256 of `token`'s bytes.
    public static func hash(_ token: String) -> [UInt8] { Array(SHA256.hash(data: Array(token.utf8))) }

    /// A new token: 256 random bits, in hex.
    public static func newToken() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
    }

    /// True when `text` could be a token (64 lowercase hex digits): anything else is refused without a lookup.
    public static func isWellFormed(_ text: String) -> Bool {
        text.utf8.count == 64 && text.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }
}

/// The sessions this node serves: those logged in or resumed here, in memory, checked on every request. The
/// metadata group holds the recorded ones for the whole cluster (``Session/recorded``); this store forgets a
/// session at logout, at its expiry, or when the metadata group ends it (a logout on another node, or the
/// user's oldest session ended by a new login).
public final class SessionStore: Sendable {
    private struct State {
        var sessions: [String: Session] = [:]
        /// Token by token hash, for the sessions the metadata group ends.
        var tokens: [[UInt8]: String] = [:]
        var insertsSincePrune = 0
    }

    private let state = Mutex(State())
    /// How long a session lives after its login.
    public let lifetime: TimeInterval

    public init(lifetimeSeconds: Int) { lifetime = TimeInterval(lifetimeSeconds) }

    /// Issues a new session for `userID`, known to this node only.
    public func issue(userID: String, now: Date = Date()) -> Session {
        let session = Session(
            token: Session.newToken(),
            userID: userID,
            expiresAt: now.addingTimeInterval(lifetime),
            recorded: false
        )
        remember(session, now: now)
        return session
    }

    /// Serves `session` from now on (one the metadata group recorded, at its login or resumed here).
    public func remember(_ session: Session, now: Date = Date()) {
        state.withLock { state in
            state.sessions[session.token] = session
            state.tokens[session.tokenHash] = session.token
            state.insertsSincePrune += 1
            // Sessions whose clients never come back are dropped once expired, a sweep per 1,024 new ones.
            if state.insertsSincePrune >= 1024 {
                state.insertsSincePrune = 0
                for (token, session) in state.sessions where session.expiresAt <= now {
                    state.sessions[token] = nil
                    state.tokens[session.tokenHash] = nil
                }
            }
        }
    }

    /// The live session for `token`, or nil if unknown here, revoked or expired.
    public func resolve(_ token: String, now: Date = Date()) -> Session? {
        state.withLock { state in
            guard let session = state.sessions[token] else { return nil }
            if session.expiresAt <= now {
                state.sessions[token] = nil
                state.tokens[session.tokenHash] = nil
                return nil
            }
            return session
        }
    }

    /// Revokes `token` here.
    public func revoke(_ token: String) {
        state.withLock { state in
            guard let session = state.sessions.removeValue(forKey: token) else { return }
            state.tokens[session.tokenHash] = nil
        }
    }

    /// Revokes here the sessions with these token hashes (the metadata group ended them).
    public func revoke(hashes: [Data]) {
        guard !hashes.isEmpty else { return }
        state.withLock { state in
            for hash in hashes {
                guard let token = state.tokens.removeValue(forKey: Array(hash)) else { continue }
                state.sessions[token] = nil
            }
        }
    }

    /// The sessions held here that the metadata group records.
    public func recorded() -> [Session] { state.withLock { Array($0.sessions.values.filter(\.recorded)) } }

    /// How many sessions this node holds in memory.
    public var count: Int { state.withLock { $0.sessions.count } }
}

/// Counts failed logins per name and locks a name out for a while after too many.
///
/// Failures count towards a lockout while they are at most `lockoutSeconds` apart. Names are counted whether or
/// not an account has them (a lockout must not tell which names exist), so the table is bounded: beyond
/// `maxNames`, names that are not locked out and have not failed within `lockoutSeconds` are forgotten, and if
/// that is not enough, every name that is not locked out.
public final class LoginThrottle: Sendable {
    private struct Record {
        var failures = 0
        var lastFailure: Date
        var lockedUntil: Date?
    }

    private let records = Mutex<[String: Record]>([:])
    private let maxFailures: Int
    private let lockout: TimeInterval
    private let maxNames: Int

    public init(maxFailures: Int, lockoutSeconds: Int, maxNames: Int = 100_000) {
        self.maxFailures = maxFailures
        self.lockout = TimeInterval(lockoutSeconds)
        self.maxNames = maxNames
    }

    /// True while `name` is locked out.
    public func isLocked(_ name: String, now: Date = Date()) -> Bool {
        records.withLock { records in
            guard let until = records[name]?.lockedUntil else { return false }
            if until <= now {
                records[name] = nil
                return false
            }
            return true
        }
    }

    public func recordFailure(_ name: String, now: Date = Date()) {
        records.withLock { records in
            var record = records[name] ?? Record(lastFailure: now)
            if now.timeIntervalSince(record.lastFailure) > lockout { record.failures = 0 }
            record.failures += 1
            record.lastFailure = now
            if record.failures >= maxFailures {
                record.lockedUntil = now.addingTimeInterval(lockout)
                record.failures = 0
            }
            if records[name] == nil, records.count >= maxNames { forgetIdle(&records, now: now) }
            records[name] = record
        }
    }

    public func recordSuccess(_ name: String) { records.withLock { $0[name] = nil } }

    /// Names remembered.
    public var count: Int { records.withLock { $0.count } }

    private func forgetIdle(_ records: inout [String: Record], now: Date) {
        let locked = { (record: Record) in (record.lockedUntil ?? .distantPast) > now }
        records = records.filter { locked($0.value) || now.timeIntervalSince($0.value.lastFailure) <= lockout }
        if records.count >= maxNames { records = records.filter { locked($0.value) } }
    }
}
