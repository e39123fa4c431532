import ArgumentParser
import Foundation
import Histogram
import Synchronization
import WarblerClient

#if canImport(Glibc)
import Glibc
#endif

/// `warbler-bench`: drives a real Warbler node over the client protocol and reports acknowledged messages per
/// second and ack latency percentiles. This first version runs the `pairs` scenario (each sender posts into its
/// own direct conversation) in closed loop with a window of unacknowledged sends per connection.
@main
struct WarblerBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warbler-bench",
        abstract: "Measure a Warbler node: acknowledged messages per second and ack latency."
    )

    @Option(help: "HOST:PORT of a running node (its users bench-0… and bench-sink must exist).") var target: String?
    @Option(help: "'single': start a node from the built binary with a fresh data folder, and stop it afterwards.")
    var spawn: String?
    @Option(help: "Concurrent senders, one connection each.") var senders = 32
    @Option(help: "Unacknowledged sends per connection.") var window = 1
    @Option(help: "Measured seconds (after a one-second warm-up).") var seconds = 10.0
    @Option(help: "Payload bytes.") var payload = 128
    @Option(help: "Password of the bench users.") var password = "bench-password-not-secret"
    @Flag(help: "Print the result as JSON.") var json = false

    func run() async throws {
        var spawned: SpawnedNode?
        let host: String
        let port: Int
        if spawn == "single" {
            let node = try SpawnedNode(users: (0..<senders).map { "bench-\($0)" } + ["bench-sink"], password: password)
            spawned = node
            (host, port) = ("127.0.0.1", node.port)
        } else if let target, let colon = target.lastIndex(of: ":"),
            let parsed = Int(target[target.index(after: colon)...])
        {
            (host, port) = (String(target[..<colon]), parsed)
        } else {
            throw ValidationError("give --target HOST:PORT or --spawn single")
        }
        defer { spawned?.stop() }

        var clients: [(WarblerClient, String)] = []
        for index in 0..<senders {
            let client = WarblerClient(host: host, port: port)
            try await client.connect()
            try await client.login(user: "bench-\(index)", password: password)
            let conversation = try await client.createDirect(with: "bench-sink")
            clients.append((client, conversation.conversationID))
        }
        let body = Data(repeating: 0x61, count: payload)
        let recorder = LatencyRecorder()
        let start = Date()
        let warmUpEnd = start.addingTimeInterval(1)
        let end = warmUpEnd.addingTimeInterval(seconds)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (client, conversation) in clients {
                for _ in 0..<window {
                    group.addTask {
                        while true {
                            let sent = Date()
                            if sent >= end { return }
                            _ = try await client.send(body, to: conversation)
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
        if json {
            print(
                "{\"senders\":\(senders),\"window\":\(window),\"payload\":\(payload),\"acks_per_second\":\(Int(result.rate)),"
                    + "\"p50_us\":\(result.p50),\"p90_us\":\(result.p90),\"p99_us\":\(result.p99),\"p999_us\":\(result.p999),"
                    + "\"max_us\":\(result.max)}"
            )
        } else {
            print("pairs: \(senders) senders, window \(window), \(payload)-byte payloads, \(Int(seconds)) s")
            print("acknowledged messages/s: \(Int(result.rate))")
            print(
                "ack latency µs: p50 \(result.p50)  p90 \(result.p90)  p99 \(result.p99)  p99.9 \(result.p999)  max \(result.max)"
            )
        }
    }
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

/// A `warbler serve` started from the binary next to this one, on a free port, with a fresh data folder.
final class SpawnedNode {
    let port: Int
    let directory: String
    let process = Process()

    init(users: [String], password: String) throws {
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(
            "warbler"
        )
        directory = NSTemporaryDirectory() + "warbler-bench-\(UUID().uuidString)"
        for user in users {
            let add = Process()
            add.executableURL = binary
            add.arguments = ["user", "add", user, "--data", directory]
            let input = Pipe()
            add.standardInput = input
            add.standardOutput = FileHandle.nullDevice
            try add.run()
            input.fileHandleForWriting.write(Data((password + "\n").utf8))
            try input.fileHandleForWriting.close()
            add.waitUntilExit()
            guard add.terminationStatus == 0 else { throw ValidationError("could not create user \(user)") }
        }
        port = Int.random(in: 20000...40000)
        process.executableURL = binary
        process.arguments = ["serve", "--data", directory, "--port", "\(port)", "--log-level", "warning"]
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        for _ in 0..<200 {
            let client = WarblerClient(host: "127.0.0.1", port: port)
            if (try? await_(client)) != nil { return }
            usleep(50_000)
        }
        throw ValidationError("the spawned node did not start")
    }

    func stop() {
        process.terminate()
        process.waitUntilExit()
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
