import ArgumentParser
import Foundation
import Histogram
import Synchronization
import WarblerClient
import WarblerWire

#if canImport(Glibc)
import Glibc
#endif

/// `warbler-bench`: drives a real Warbler node or cluster over the client protocol and reports acknowledged
/// messages per second and ack latency percentiles. This first version runs the `pairs` scenario (each sender posts into its
/// own direct conversation) in closed loop with a window of unacknowledged sends per connection.
@main
struct WarblerBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warbler-bench",
        abstract: "Measure a Warbler node: acknowledged messages per second and ack latency."
    )

    @Option(help: "HOST:PORT[,HOST:PORT…] of running nodes (users bench-0… and bench-sink must exist).")
    var target: String?
    @Option(
        help: "'single' or 'cluster:N': start nodes from the built binary with fresh data folders, stop them after."
    )
    var spawn: String?
    @Option(help: "Concurrent senders, one connection each.") var senders = 32
    @Option(help: "Unacknowledged sends per connection.") var window = 1
    @Option(help: "Measured seconds (after a one-second warm-up).") var seconds = 10.0
    @Option(help: "Payload bytes.") var payload = 128
    @Option(help: "Password of the bench users.") var password = "bench-password-not-secret"
    @Flag(help: "Print the result as JSON.") var json = false
    @Flag(
        help: """
            Chaos mode: retry failed sends with the same client message id until acknowledged, then check that every \
            node holds every acknowledged message at its seq, gap-free and in one order (exit 1 if not).
            """
    )
    var verify = false

    func run() async throws {
        var spawned: SpawnedCluster?
        var targets: [(host: String, port: Int)] = []
        if let spawn {
            let size: Int
            if spawn == "single" {
                size = 1
            } else if spawn.hasPrefix("cluster:"), let count = Int(spawn.dropFirst("cluster:".count)), count >= 1 {
                size = count
            } else {
                throw ValidationError("--spawn is 'single' or 'cluster:N'")
            }
            let cluster = try SpawnedCluster(
                size: size,
                users: (0..<senders).map { "bench-\($0)" } + ["bench-sink"],
                password: password
            )
            spawned = cluster
            targets = cluster.ports.map { ("127.0.0.1", $0) }
        } else if let target {
            for address in target.split(separator: ",") {
                guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...])
                else { throw ValidationError("--target takes HOST:PORT[,HOST:PORT…]") }
                targets.append((String(address[..<colon]), port))
            }
        }
        guard !targets.isEmpty else { throw ValidationError("give --target HOST:PORT[,…] or --spawn single|cluster:N") }
        defer { spawned?.stop() }

        var clients: [(WarblerClient, String)] = []
        for index in 0..<senders {
            // Senders spread over the nodes round-robin: every node is a gateway.
            let (host, port) = targets[index % targets.count]
            let client = WarblerClient(host: host, port: port)
            try await client.connect()
            try await client.login(user: "bench-\(index)", password: password)
            let conversation = try await client.createDirect(with: "bench-sink")
            clients.append((client, conversation.conversationID))
        }
        let body = Data(repeating: 0x61, count: payload)
        let recorder = LatencyRecorder()
        let acknowledged = AcknowledgedMessages()
        let start = Date()
        let warmUpEnd = start.addingTimeInterval(1)
        let end = warmUpEnd.addingTimeInterval(seconds)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (client, conversation) in clients {
                for _ in 0..<window {
                    group.addTask { [verify] in
                        while true {
                            let sent = Date()
                            if sent >= end { return }
                            if verify {
                                let id = UUID().uuidString
                                var unique = Data(id.utf8)
                                unique.append(body.prefix(max(0, body.count - unique.count)))
                                let ack = try await sendUntilAcknowledged(
                                    unique,
                                    id: id,
                                    to: conversation,
                                    with: client
                                )
                                acknowledged.record(conversation: conversation, seq: ack.seq, payload: unique)
                            } else {
                                _ = try await client.send(body, to: conversation)
                            }
                            // In verify mode: the latency until acknowledged, retries included.
                            let acked = Date()
                            if sent >= warmUpEnd && acked <= end {
                                recorder.record(microseconds: UInt64(acked.timeIntervalSince(sent) * 1_000_000))
                            }
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        for (client, _) in clients { await client.close() }
        let result = recorder.result(seconds: seconds)
        if verify {
            try await check(acknowledged, targets: targets, conversations: clients.map(\.1))
        }
        if json {
            print(
                "{\"nodes\":\(targets.count),\"senders\":\(senders),\"window\":\(window),\"payload\":\(payload),\"acks_per_second\":\(Int(result.rate)),"
                    + "\"p50_us\":\(result.p50),\"p90_us\":\(result.p90),\"p99_us\":\(result.p99),\"p999_us\":\(result.p999),"
                    + "\"max_us\":\(result.max)}"
            )
        } else {
            print(
                "pairs: \(senders) senders over \(targets.count) node(s), window \(window), \(payload)-byte payloads, "
                    + "\(Int(seconds)) s"
            )
            print("acknowledged messages/s: \(Int(result.rate))")
            print(
                "ack latency µs: p50 \(result.p50)  p90 \(result.p90)  p99 \(result.p99)  p99.9 \(result.p999)  max \(result.max)"
            )
        }
    }
}

extension WarblerBench {
    /// Every node holds every acknowledged message at its seq, gap-free, and the same sequence as the others.
    func check(
        _ acknowledged: AcknowledgedMessages,
        targets: [(host: String, port: Int)],
        conversations: [String]
    )
        async throws
    {
        let expected = acknowledged.all
        var total = 0
        for conversation in conversations {
            var reference: [Data]?
            for (host, port) in targets {
                let reader = WarblerClient(host: host, port: port)
                try await reader.connect()
                try await reader.login(user: "bench-sink", password: password)
                var payloads: [Data] = []
                var before: UInt64 = 0
                while true {
                    let page = try await reader.history(of: conversation, before: before, limit: 500)
                    payloads = page.messages.map(\.payload) + payloads
                    guard let first = page.messages.first, page.more else { break }
                    before = first.seq
                }
                await reader.close()
                for (seq, payload) in expected[conversation] ?? [:] {
                    guard payloads.indices.contains(Int(seq) - 1), payloads[Int(seq) - 1] == payload else {
                        throw VerificationFailure("\(host):\(port) lacks acknowledged \(conversation)/\(seq)")
                    }
                }
                if let reference, reference != payloads {
                    throw VerificationFailure("\(host):\(port) holds another sequence of \(conversation)")
                }
                reference = payloads
            }
            total += expected[conversation]?.count ?? 0
        }
        print("verified: \(total) acknowledged messages present, gap-free and in one order on \(targets.count) node(s)")
    }
}

/// Sends until acknowledged, resending the same client message id (which never creates a second message).
func sendUntilAcknowledged(
    _ payload: Data,
    id: String,
    to conversation: String,
    with client: WarblerClient
)
    async throws -> Warbler_V1_Ack
{
    let deadline = Date().addingTimeInterval(120)
    while true {
        do { return try await client.send(payload, to: conversation, clientMessageID: id) } catch {
            if Date() > deadline { throw VerificationFailure("\(id) not acknowledged within 120 s: \(error)") }
            try await Task.sleep(nanoseconds: 100_000_000)
        }
    }
}

/// What the nodes acknowledged, per conversation and seq.
final class AcknowledgedMessages: Sendable {
    private let messages = Mutex<[String: [UInt64: Data]]>([:])
    func record(conversation: String, seq: UInt64, payload: Data) {
        messages.withLock { $0[conversation, default: [:]][seq] = payload }
    }
    var all: [String: [UInt64: Data]] { messages.withLock { $0 } }
}

struct VerificationFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Ack latencies from many tasks, in an HdrHistogram.
final class LatencyRecorder: Sendable {
    private let histogram = Mutex(
        Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
    )
    private let count = Atomic<Int>(0)

    func record(microseconds: UInt64) {
        histogram.withLock { _ = $0.record(max(microseconds, 1)) }
        count.add(1, ordering: .relaxed)
    }

    func result(seconds: Double) -> (rate: Double, p50: UInt64, p90: UInt64, p99: UInt64, p999: UInt64, max: UInt64) {
        histogram.withLock { histogram in
            (
                Double(count.load(ordering: .relaxed)) / seconds,
                histogram.valueAtPercentile(50), histogram.valueAtPercentile(90), histogram.valueAtPercentile(99),
                histogram.valueAtPercentile(99.9), histogram.max
            )
        }
    }
}

/// `warbler serve` processes started from the binary next to this one, on free ports, with fresh data folders:
/// node 1 initialises the cluster (and holds the bench accounts), the others join it.
final class SpawnedCluster {
    var ports: [Int] = []
    let directory: String
    var processes: [Process] = []
    let binary: URL

    init(size: Int, users: [String], password: String) throws {
        binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(
            "warbler"
        )
        directory = NSTemporaryDirectory() + "warbler-bench-\(UUID().uuidString)"
        let first = directory + "/n1"
        for user in users {
            let add = Process()
            add.executableURL = binary
            add.arguments = ["user", "add", user, "--data", first]
            let input = Pipe()
            add.standardInput = input
            add.standardOutput = FileHandle.nullDevice
            try add.run()
            input.fileHandleForWriting.write(Data((password + "\n").utf8))
            try input.fileHandleForWriting.close()
            add.waitUntilExit()
            guard add.terminationStatus == 0 else { throw ValidationError("could not create user \(user)") }
        }
        let base = Int.random(in: 200...390) * 100
        var firstPeer = ""
        for node in 1...size {
            let data = directory + "/n\(node)"
            let (client, webSocket, peer) = (base + node * 3, base + node * 3 + 1, base + node * 3 + 2)
            var arguments = [
                "serve", "--data", data, "--node-id", "\(node)", "--port", "\(client)", "--websocket-port",
                "\(webSocket)", "--peer-port", "\(peer)", "--log-level", "warning",
            ]
            if node == 1 {
                firstPeer = "127.0.0.1:\(peer)"
            } else {
                try run(["cert", "issue", "--node", "\(node)", "--ca", first + "/ca", "--out", data + "/certs"])
                arguments += ["--join", firstPeer]
            }
            let process = Process()
            process.executableURL = binary
            process.arguments = arguments
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            processes.append(process)
            ports.append(client)
            try waitUntilListening(client)
        }
        if size > 1 { try waitUntilFormed(size: size, peer: firstPeer, certificates: first + "/certs") }
    }

    private func waitUntilListening(_ port: Int) throws {
        for _ in 0..<200 {
            let client = WarblerClient(host: "127.0.0.1", port: port)
            if (try? await_(client)) != nil { return }
            usleep(50_000)
        }
        throw ValidationError("a spawned node did not start")
    }

    /// Waits until every group has all nodes as members (the placement's voters, learners elsewhere).
    private func waitUntilFormed(size: Int, peer: String, certificates: String) throws {
        for _ in 0..<240 {
            if let json = try? run(["cluster", "status", "--json", "--peer", peer, "--certs", certificates]),
                let object = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
                let groups = object["groups"] as? [[String: Any]], groups.count > 1,
                groups.allSatisfy({ group in
                    let voters = group["voters"] as? [Any] ?? []
                    let learners = group["learners"] as? [Any] ?? []
                    return voters.count + learners.count == size && (group["leader"] as? Int ?? 0) != 0
                })
            {
                return
            }
            usleep(500_000)
        }
        throw ValidationError("the spawned cluster did not form")
    }

    @discardableResult
    private func run(_ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = binary
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw ValidationError("warbler \(arguments.first ?? "") failed") }
        return String(decoding: data, as: UTF8.self)
    }

    func stop() {
        for process in processes { process.terminate() }
        for process in processes { process.waitUntilExit() }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// Connect synchronously (used only while waiting for the spawned node to listen).
private func await_(_ client: WarblerClient) throws {
    let done = DispatchSemaphore(value: 0)
    let outcome = Mutex<(any Error)?>(nil)
    Task {
        do { try await client.connect() } catch { outcome.withLock { $0 = error } }
        await client.close()
        done.signal()
    }
    done.wait()
    if let error = outcome.withLock({ $0 }) { throw error }
}
