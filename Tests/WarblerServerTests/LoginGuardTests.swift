import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import WarblerServer

struct AddressLoginBudgetTests {
    let minute: UInt64 = 60_000_000_000

    @Test func anAddressSpendsItsBurstThenOneAttemptPerIntervalWhileOthersKeepTheirs() throws {
        let budget = AddressLoginBudget(perMinute: 6)
        let attacker = try SocketAddress(ipAddress: "192.0.2.7", port: 40_000)
        let sameHostOtherPort = try SocketAddress(ipAddress: "192.0.2.7", port: 40_001)
        let other = try SocketAddress(ipAddress: "192.0.2.8", port: 40_000)
        let start: UInt64 = 1_000 * minute
        for _ in 0..<6 { #expect(budget.take(attacker, now: start)) }
        #expect(!budget.take(sameHostOtherPort, now: start), "the port does not make another address")
        #expect(budget.take(other, now: start))
        // One attempt regained every 10 s (6 a minute), never more than the burst.
        #expect(!budget.take(attacker, now: start + 9 * minute / 60))
        #expect(budget.take(attacker, now: start + 10 * minute / 60))
        #expect(!budget.take(attacker, now: start + 10 * minute / 60))
        // A caller that read the clock before another one took its attempt regains nothing (it once wrapped
        // around to a whole burst).
        #expect(!budget.take(attacker, now: start + 9 * minute / 60))
        let later = start + 10 * minute
        for _ in 0..<6 { #expect(budget.take(attacker, now: later)) }
        #expect(!budget.take(attacker, now: later))
    }

    @Test func aSuccessfulLoginGivesItsAttemptBack() throws {
        let budget = AddressLoginBudget(perMinute: 2)
        let address = try SocketAddress(ipAddress: "2001:db8:1:2::5", port: 1)
        let sameNetwork = try SocketAddress(ipAddress: "2001:db8:1:2:ffff::9", port: 1)
        let otherNetwork = try SocketAddress(ipAddress: "2001:db8:1:3::5", port: 1)
        for _ in 0..<10 {
            #expect(budget.take(address, now: 0))
            budget.giveBack(address, now: 0)
        }
        #expect(budget.take(address, now: 0) && budget.take(sameNetwork, now: 0), "one /64, one budget")
        #expect(!budget.take(address, now: 0))
        #expect(budget.take(otherNetwork, now: 0))
        // An IPv4-mapped IPv6 address is its IPv4 address.
        let v4 = try SocketAddress(ipAddress: "198.51.100.1", port: 1)
        let mapped = try SocketAddress(ipAddress: "::ffff:198.51.100.1", port: 1)
        #expect(budget.take(v4, now: 0) && budget.take(mapped, now: 0))
        #expect(!budget.take(v4, now: 0))
    }

    @Test func zeroTurnsTheLimitOffAndTheTableStaysBounded() throws {
        let off = AddressLoginBudget(perMinute: 0)
        let address = try SocketAddress(ipAddress: "192.0.2.1", port: 1)
        for _ in 0..<100 { #expect(off.take(address)) }
        #expect(off.count == 0)

        let budget = AddressLoginBudget(perMinute: 1, maxAddresses: 4)
        for host in 1...4 { #expect(budget.take(try SocketAddress(ipAddress: "192.0.2.\(host)", port: 1), now: 0)) }
        #expect(budget.count == 4)
        // Full, and every remembered address still regaining its attempt: a new one is let through unlimited.
        let fifth = try SocketAddress(ipAddress: "192.0.2.5", port: 1)
        #expect(budget.take(fifth, now: 0) && budget.take(fifth, now: 0))
        #expect(budget.count == 4)
        // A minute later the four have their attempt back and are forgotten to make room.
        #expect(budget.take(fifth, now: minute))
        #expect(budget.count == 1)
        #expect(!budget.take(fifth, now: minute))
    }
}

struct PasswordVerifierTests {
    static func address(_ text: String) -> SocketAddress? { try? SocketAddress(ipAddress: text, port: 40_000) }

    @Test func atMostItsCapacityWaitsOrRunsAndARunningCheckHoldsItsPlace() throws {
        let verifier = PasswordVerifier(threads: 1, waitingPerThread: 2, perAddress: 3)
        defer { verifier.shutdown() }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let ada = Self.address("10.0.0.1")
        #expect(verifier.capacity == 3)
        let tickets = (0..<3).compactMap { _ in verifier.reserve(ada) }
        #expect(tickets.count == 3)
        #expect(verifier.reserve(Self.address("10.0.0.2")) == nil, "no place left for anyone")
        for ticket in tickets { verifier.release(ticket) }
        #expect(verifier.taken == 0)
        // A check holds its place while it runs, off the calling thread.
        let gate = DispatchSemaphore(value: 0)
        let caller = pthread_self()
        let first = verifier.run(try #require(verifier.reserve(ada)), on: loop) { () -> Bool in
            gate.wait()
            return pthread_equal(pthread_self(), caller) == 0
        }
        let more = (0..<2).compactMap { _ in verifier.reserve(ada) }
        #expect(more.count == 2)
        #expect(verifier.reserve(ada) == nil)
        for ticket in more { verifier.release(ticket) }
        gate.signal()
        #expect(try first.wait())
        // It gave its place back when it ended.
        #expect(verifier.taken == 0)
    }

    @Test func aShutDownVerifierFailsTheChecksThatWaitAndGivesTheirPlacesBack() throws {
        let verifier = PasswordVerifier(threads: 1, waitingPerThread: 3, perAddress: 4)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let started = DispatchSemaphore(value: 0)
        let gate = DispatchSemaphore(value: 0)
        let running = verifier.run(try #require(verifier.reserve(nil)), on: loop) {
            started.signal()
            gate.wait()
        }
        started.wait()
        let waiting = verifier.run(try #require(verifier.reserve(nil)), on: loop) {}
        let stopping = Thread { verifier.shutdown() }
        stopping.start()
        usleep(50_000)
        gate.signal()
        try running.wait()
        #expect(throws: (any Error).self) { try waiting.wait() }
        #expect(verifier.taken == 0)
    }

    @Test func oneAddressHoldsAtMostItsShareOfThePlaces() throws {
        let verifier = PasswordVerifier(threads: 1, waitingPerThread: 7)
        defer { verifier.shutdown() }
        #expect(verifier.capacity == 8)
        #expect(verifier.perAddress == 2, "a quarter of the places, at least two")
        let flood = Self.address("10.0.0.1")
        let floodOtherPort = try SocketAddress(ipAddress: "10.0.0.1", port: 40_001)
        #expect(verifier.reserve(flood) != nil && verifier.reserve(floodOtherPort) != nil)
        #expect(verifier.reserve(flood) == nil, "the port does not make another address")
        // An IPv6 address counts by its /64: 2001:db8::2 shares the places of 2001:db8::1.
        #expect(verifier.reserve(Self.address("2001:db8::1")) != nil)
        #expect(verifier.reserve(Self.address("2001:db8::2")) != nil)
        #expect(verifier.reserve(Self.address("2001:db8::3")) == nil)
        #expect(verifier.reserve(Self.address("2001:db8:0:1::1")) != nil, "another /64")
        #expect(verifier.reserve(Self.address("10.0.0.2")) != nil)
        #expect(verifier.taken == 6)
    }

    @Test func addressesTakeTurnsSoAQueueOfOneDoesNotWaitForAnothersWholeQueue() throws {
        let verifier = PasswordVerifier(threads: 1, waitingPerThread: 7, perAddress: 4)
        defer { verifier.shutdown() }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let flood = Self.address("10.0.0.1")
        let ada = Self.address("10.0.0.2")
        let order = Mutex<[String]>([])
        let started = DispatchSemaphore(value: 0)
        let gate = DispatchSemaphore(value: 0)
        var results: [EventLoopFuture<Void>] = []
        func check(_ address: SocketAddress?, _ name: String, blocking: Bool = false) throws {
            let ticket = try #require(verifier.reserve(address), "\(name) got no place")
            results.append(
                verifier.run(ticket, on: loop) {
                    if blocking {
                        started.signal()
                        gate.wait()
                    }
                    order.withLock { $0.append(name) }
                }
            )
        }
        // The first check holds the only thread while three more from the same address, then one of ada's, wait.
        try check(flood, "flood-1", blocking: true)
        started.wait()
        for index in 2...4 { try check(flood, "flood-\(index)") }
        try check(ada, "ada-1")
        gate.signal()
        for future in results { try future.wait() }
        #expect(order.withLock { $0 } == ["flood-1", "flood-2", "ada-1", "flood-3", "flood-4"])
        #expect(verifier.taken == 0)
    }
}

struct LoginThrottleBoundTests {
    @Test func failuresCountOnlyWithinTheLockoutAndTheTableStaysBounded() {
        let throttle = LoginThrottle(maxFailures: 2, lockoutSeconds: 60, maxNames: 3)
        let now = Date()
        throttle.recordFailure("ada", now: now)
        throttle.recordFailure("ada", now: now.addingTimeInterval(61))
        #expect(!throttle.isLocked("ada", now: now.addingTimeInterval(61)), "the first failure is too old")
        throttle.recordFailure("ada", now: now.addingTimeInterval(62))
        #expect(throttle.isLocked("ada", now: now.addingTimeInterval(62)))
        // Random names fill the table; stale ones are forgotten, a locked name is kept.
        let later = now.addingTimeInterval(100)
        throttle.recordFailure("x1", now: now)
        throttle.recordFailure("x2", now: now)
        #expect(throttle.count == 3)
        throttle.recordFailure("x3", now: later)
        #expect(throttle.count == 2)
        #expect(throttle.isLocked("ada", now: later))
        for index in 0..<10 { throttle.recordFailure("y\(index)", now: later) }
        #expect(throttle.count <= 3)
        #expect(throttle.isLocked("ada", now: later), "a lockout survives a flood of names")
    }
}
