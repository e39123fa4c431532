import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// Runs password checks (scrypt: tens of milliseconds of CPU and 32 MiB each) apart from the node's chat work:
/// on threads of their own (half the cores, so that hashing never takes more), a bounded number waiting, taken
/// in turn by source address.
///
/// Without it a flood of wrong passwords — no account needed — took every core: the checks ran on the thread
/// pool that serves history reads, with no bound on those waiting (docs/performance.md, "A flood of wrong
/// passwords"). Now at most ``capacity`` checks are waiting or running, and at most ``perAddress`` of them from
/// one source address (``AddressKey``): a login beyond either bound is refused at once with `node.rate_limited`,
/// without hashing. The threads take the waiting checks one address at a time, in turn, so a host that keeps its
/// share of the places full delays another host's login by one check, not by its whole queue. The threads keep
/// the default CPU priority: a lower one (nice 10) measured no better for chat under a flood, and on a saturated
/// machine it left logins waiting past their connections' login timeout.
final class PasswordVerifier: Sendable {
    /// Password checks waiting or running at most.
    let capacity: Int
    /// Password checks waiting or running at most from one source address.
    let perAddress: Int

    /// A place for one check, from one address: taken by ``reserve(_:)``, given back by ``run(_:on:_:)`` when
    /// the check ends, or by ``release(_:)``.
    struct Ticket: Sendable {
        fileprivate let address: AddressKey?
    }

    private struct Job: Sendable {
        let run: @Sendable () -> Void
        let cancel: @Sendable () -> Void
    }

    private struct State {
        /// Places taken (reserved, waiting or running), per address; addresses without any are not kept.
        var places: [AddressKey?: Int] = [:]
        var total = 0
        /// Checks waiting, per address, oldest first.
        var waiting: [AddressKey?: [Job]] = [:]
        /// The addresses with checks waiting, in the order of their next turn.
        var turns: [AddressKey?] = []
    }

    private let pool: NIOThreadPool
    private let state = Mutex(State())

    /// `threads` verifying threads, each with `waitingPerThread` checks queued at most beside the one it runs;
    /// one address may hold `perAddress` of those places (by default a quarter of them, at least two).
    init(threads: Int, waitingPerThread: Int = 16, perAddress: Int? = nil) {
        capacity = threads * (waitingPerThread + 1)
        self.perAddress = min(capacity, perAddress ?? max(2, capacity / 4))
        pool = NIOThreadPool(numberOfThreads: threads)
        pool.start()
    }

    /// Takes a place for one check from `address`; nil when ``capacity`` checks are already waiting or running,
    /// or ``perAddress`` from that address (refuse the login without hashing).
    func reserve(_ address: SocketAddress?) -> Ticket? {
        let key = AddressKey(address)
        return state.withLock { state in
            guard state.total < capacity, state.places[key, default: 0] < perAddress else { return nil }
            state.total += 1
            state.places[key, default: 0] += 1
            return Ticket(address: key)
        }
    }

    /// Gives back a place that ``reserve(_:)`` took, without a check.
    func release(_ ticket: Ticket) {
        state.withLock { state in
            state.total -= 1
            let left = state.places[ticket.address, default: 1] - 1
            state.places[ticket.address] = left > 0 ? left : nil
        }
    }

    /// Places taken now, in all (for tests and reports).
    var taken: Int { state.withLock { $0.total } }

    /// Runs `check` in the place `ticket` holds, on a verifying thread when its address's turn comes, and
    /// returns its result on `eventLoop`; the place is given back when the check ends. Fails if the verifier was
    /// shut down.
    func run<T: Sendable>(
        _ ticket: Ticket,
        on eventLoop: any EventLoop,
        _ check: @escaping @Sendable () throws -> T
    ) -> EventLoopFuture<T> {
        let promise = eventLoop.makePromise(of: T.self)
        let job = Job(
            run: { [self] in
                let result = Result { try check() }
                release(ticket)
                promise.completeWith(result)
            },
            cancel: { [self] in
                release(ticket)
                promise.fail(NIOThreadPoolError.ThreadPoolInactive())
            }
        )
        state.withLock { state in
            if state.waiting[ticket.address] == nil { state.turns.append(ticket.address) }
            state.waiting[ticket.address, default: []].append(job)
        }
        // One pool item per check; each runs whichever check's turn it is when a thread is free.
        pool.submit { [self] work in
            guard let next = nextJob() else { return }
            if case .active = work { next.run() } else { next.cancel() }
        }
        return promise.futureResult
    }

    /// The oldest waiting check of the address whose turn it is; that address goes to the back of the turns if
    /// it has more.
    private func nextJob() -> Job? {
        state.withLock { state in
            guard !state.turns.isEmpty else { return nil }
            let address = state.turns.removeFirst()
            guard var queue = state.waiting[address], !queue.isEmpty else { return nil }
            let job = queue.removeFirst()
            if queue.isEmpty {
                state.waiting[address] = nil
            } else {
                state.waiting[address] = queue
                state.turns.append(address)
            }
            return job
        }
    }

    /// Stops the threads; checks still waiting fail.
    func shutdown() { try? pool.syncShutdownGracefully() }
}

/// Failed password logins per source address: each address (an IPv6 one by its /64 network, which one host
/// usually holds whole) may fail `perMinute` times in a burst, then regains one attempt every 60 / `perMinute`
/// seconds. An address without attempts left has its password logins refused before any hashing, with
/// `node.rate_limited` — so one host guessing passwords, or only burning the node's CPU with them, is held to
/// that rate, and other addresses keep the password checks for themselves. Session resumes are not counted.
///
/// Every login attempt takes an attempt when it starts (so that many sent at once cannot all pass the check
/// before the first one fails); a successful login gives it back. At most `maxAddresses` addresses are
/// remembered; when more have attempts in use, new ones are not limited (the bounded ``PasswordVerifier`` still
/// protects the node) rather than refused.
final class AddressLoginBudget: Sendable {
    private struct Bucket {
        var attempts: Double
        var updated: UInt64
    }

    /// Failed logins an address may make per minute (and at once); 0: no limit.
    let perMinute: Int
    private let maxAddresses: Int
    private let buckets = Mutex<[AddressKey: Bucket]>([:])

    init(perMinute: Int, maxAddresses: Int = 65_536) {
        self.perMinute = perMinute
        self.maxAddresses = maxAddresses
    }

    /// Takes one attempt for `address`; false when it has none left (refuse the login). A nil or non-IP
    /// address (a Unix socket) is not limited.
    func take(_ address: SocketAddress?, now: UInt64 = NIODeadline.now().uptimeNanoseconds) -> Bool {
        guard perMinute > 0, let key = AddressKey(address) else { return true }
        return buckets.withLock { buckets in
            var bucket = refilled(buckets[key], now: now)
            guard bucket.attempts >= 1 else {
                buckets[key] = bucket
                return false
            }
            bucket.attempts -= 1
            if buckets[key] == nil, buckets.count >= maxAddresses {
                prune(&buckets, now: now)
                if buckets.count >= maxAddresses { return true }
            }
            buckets[key] = bucket
            return true
        }
    }

    /// Gives back the attempt a successful login took.
    func giveBack(_ address: SocketAddress?, now: UInt64 = NIODeadline.now().uptimeNanoseconds) {
        guard perMinute > 0, let key = AddressKey(address) else { return }
        buckets.withLock { buckets in
            guard let bucket = buckets[key] else { return }
            var refilled = refilled(bucket, now: now)
            refilled.attempts = min(Double(perMinute), refilled.attempts + 1)
            buckets[key] = refilled
        }
    }

    /// Addresses remembered (those that used attempts not yet regained, and some that have).
    var count: Int { buckets.withLock { $0.count } }

    private func refilled(_ bucket: Bucket?, now: UInt64) -> Bucket {
        guard var bucket else { return Bucket(attempts: Double(perMinute), updated: now) }
        // Callers read the clock before they take the lock, so `now` may be a little older than `updated`.
        guard now > bucket.updated else { return bucket }
        let seconds = Double(now - bucket.updated) / 1e9
        bucket.attempts = min(Double(perMinute), bucket.attempts + seconds * Double(perMinute) / 60)
        bucket.updated = now
        return bucket
    }

    /// Forgets the addresses that have regained every attempt.
    private func prune(_ buckets: inout [AddressKey: Bucket], now: UInt64) {
        buckets = buckets.filter { refilled($0.value, now: now).attempts < Double(perMinute) }
    }
}

/// A source address as the login budget counts it: an IPv4 address, or an IPv6 address's /64 network (an
/// IPv4-mapped IPv6 address counts as its IPv4 address).
struct AddressKey: Hashable, Sendable {
    private let high: UInt64
    private let low: UInt64

    init?(_ address: SocketAddress?) {
        switch address {
        case .v4(let v4)?:
            high = 0
            low = UInt64(UInt32(bigEndian: v4.address.sin_addr.s_addr))
        case .v6(let v6)?:
            let bytes = withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
            let prefix = bytes[0..<8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            let suffix = bytes[8..<16].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            if prefix == 0, suffix >> 32 == 0xFFFF {
                high = 0
                low = suffix & 0xFFFF_FFFF
            } else {
                high = prefix
                low = 1 << 63
            }
        default:
            return nil
        }
    }
}
