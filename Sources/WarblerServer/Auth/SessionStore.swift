import Foundation
import Synchronization

/// A logged-in session.
public struct Session: Sendable, Hashable {
    public var token: String
    public var userID: String
    public var expiresAt: Date
}

/// Session tokens: 256 random bits each, held in memory with an expiry; revoked at logout. A restart of the
/// node ends every session (clients log in again).
public final class SessionStore: Sendable {
    private let sessions = Mutex<[String: Session]>([:])
    private let lifetime: TimeInterval

    public init(lifetimeSeconds: Int) { lifetime = TimeInterval(lifetimeSeconds) }

    /// Issues a new token for `userID`.
    public func issue(userID: String, now: Date = Date()) -> Session {
        var generator = SystemRandomNumberGenerator()
        let token = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
        let session = Session(token: token, userID: userID, expiresAt: now.addingTimeInterval(lifetime))
        sessions.withLock { $0[token] = session }
        return session
    }

    /// The live session for `token`, or nil if unknown, revoked or expired.
    public func resolve(_ token: String, now: Date = Date()) -> Session? {
        sessions.withLock { sessions in
            guard let session = sessions[token] else { return nil }
            if session.expiresAt <= now {
                sessions[token] = nil
                return nil
            }
            return session
        }
    }

    /// Revokes `token`.
    public func revoke(_ token: String) { sessions.withLock { $0[token] = nil } }
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
