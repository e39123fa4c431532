import Foundation
import Synchronization
import WarblerClient

/// The `restart` scenario: U clients (SDK, one account each), each logged in with its password, then the node is
/// killed (SIGKILL) and started again on the same data, and the bench times how long until every client is back
/// — reconnected, logged in (its session resumed, or a new login with the password it kept) and synced.
enum RestartScenario {
    /// What coming back looked like.
    struct Summary: Codable, Sendable {
        var clients: Int
        /// From the kill until the restarted node listened again.
        var nodeStartSeconds: Double
        /// From the kill until the last client was back (or until the bench gave up waiting).
        var allBackSeconds: Double
        /// From the kill until each client was back: the median and the 99th percentile.
        var backP50Seconds: Double
        var backP99Seconds: Double
        /// Back on the session they had (resumed, no password check).
        var resumed: Int
        /// Back with a new session (logged in again with their password).
        var loggedInAgain: Int
        /// Not back when the bench stopped waiting.
        var notBack: Int

        enum CodingKeys: String, CodingKey {
            case clients
            case nodeStartSeconds = "node_start_seconds"
            case allBackSeconds = "all_back_seconds"
            case backP50Seconds = "back_p50_seconds"
            case backP99Seconds = "back_p99_seconds"
            case resumed
            case loggedInAgain = "logged_in_again"
            case notBack = "not_back"
        }
    }

    /// Logs `users` in (one client each), restarts node 1 of `cluster`, and waits at most `patience` seconds
    /// for every client to be back.
    static func run(
        fleet: Fleet,
        cluster: SpawnedCluster,
        users: [String],
        patience: Double,
        progress: (String) -> Void
    ) async throws -> Summary {
        let clients = try await fleet.connectAll(users.map { ($0, 0) })
        let tokens = clients.map(\.sessionToken)
        progress("\(clients.count) client(s) logged in; killing the node and starting it again…")

        // Each client's way back is timed from the kill, by its own task waiting for its `reconnected` event.
        let killed = ContinuousClock.now
        let back = BackTimes()
        let waiting = Task {
            await withTaskGroup(of: Void.self) { group in
                for (index, client) in clients.enumerated() {
                    group.addTask {
                        for await event in client.events {
                            if case .reconnected = event {
                                back.note(index, ContinuousClock.now - killed)
                                return
                            }
                        }
                    }
                }
            }
        }
        try cluster.restart(node: 0)
        let nodeStart = ContinuousClock.now - killed
        let deadline = killed + .seconds(patience)
        while back.count < clients.count && ContinuousClock.now < deadline {
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        waiting.cancel()
        let times = back.all
        let seconds = times.values.map(Self.seconds).sorted()
        func percentile(_ fraction: Double) -> Double {
            seconds.isEmpty
                ? 0 : seconds[min(seconds.count - 1, Int((Double(seconds.count) * fraction).rounded(.up)) - 1)]
        }
        let resumed = times.keys.filter { clients[$0].sessionToken == tokens[$0] }.count
        for client in clients { await client.close() }
        return Summary(
            clients: clients.count,
            nodeStartSeconds: Self.seconds(nodeStart),
            allBackSeconds: times.count == clients.count ? (seconds.last ?? 0) : patience,
            backP50Seconds: percentile(0.5),
            backP99Seconds: percentile(0.99),
            resumed: resumed,
            loggedInAgain: times.count - resumed,
            notBack: clients.count - times.count
        )
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}

/// When each client was back, by its index.
private final class BackTimes: Sendable {
    private let times = Mutex<[Int: Duration]>([:])
    func note(_ index: Int, _ time: Duration) { times.withLock { $0[index] = time } }
    var count: Int { times.withLock { $0.count } }
    var all: [Int: Duration] { times.withLock { $0 } }
}
