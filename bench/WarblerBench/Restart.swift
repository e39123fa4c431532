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
        let killed = monotonicNanoseconds()
        let backTimes = LatencyRecorder()
        let back = BackClients()
        let waiting = Task {
            await withTaskGroup(of: Void.self) { group in
                for (index, client) in clients.enumerated() {
                    group.addTask {
                        for await event in client.events {
                            if case .reconnected = event {
                                backTimes.record(nanoseconds: monotonicNanoseconds() - killed)
                                back.insert(index)
                                return
                            }
                        }
                    }
                }
            }
        }
        try cluster.restart(node: 0)
        let nodeStart = monotonicNanoseconds() - killed
        let deadline = killed + UInt64(patience * 1e9)
        while back.count < clients.count && monotonicNanoseconds() < deadline {
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        waiting.cancel()
        let returned = back.all
        let times = backTimes.summary
        let seconds = { (microseconds: UInt64) in Double(microseconds) / 1e6 }
        let resumed = returned.filter { clients[$0].sessionToken == tokens[$0] }.count
        for client in clients { await client.close() }
        return Summary(
            clients: clients.count,
            nodeStartSeconds: Double(nodeStart) / 1e9,
            allBackSeconds: returned.count == clients.count ? seconds(times.max) : patience,
            backP50Seconds: seconds(times.p50),
            backP99Seconds: seconds(times.p99),
            resumed: resumed,
            loggedInAgain: returned.count - resumed,
            notBack: clients.count - returned.count
        )
    }
}

/// The clients that are back, by index.
private final class BackClients: Sendable {
    private let indices = Mutex(Set<Int>())
    func insert(_ index: Int) { _ = indices.withLock { $0.insert(index) } }
    var count: Int { indices.withLock { $0.count } }
    var all: Set<Int> { indices.withLock { $0 } }
}
