import ArgumentParser
import Dispatch
import Foundation
import Synchronization
import WarblerChat
import WarblerClient

#if canImport(Glibc)
import Glibc
#endif

/// `warbler serve` processes started from the binary next to this one, on free ports, with fresh data folders:
/// node 1 initialises the cluster (and holds the bench accounts), the others join it.
final class SpawnedCluster {
    var ports: [Int] = []
    /// The server processes' ids (for CPU and memory figures).
    var pids: [Int32] { processes.map(\.processIdentifier) }
    let directory: String
    var processes: [Process] = []
    let binary: URL
    /// How many groups (the metadata group and the partitions) each node led when the cluster was ready, by
    /// node id from 1 (empty for a single node).
    var groupsLed: [Int] = []
    /// Asks the cluster who leads each group (nil for a single node).
    private(set) var status: ClusterStatus?

    /// Starts `size` nodes with `users` created; on failure, stops the nodes it started and removes their data.
    init(size: Int, users: [String], password: String) throws {
        binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(
            "warbler"
        )
        directory = NSTemporaryDirectory() + "warbler-bench-\(UUID().uuidString)"
        ChildProcesses.shared.own(directory)
        do {
            try start(size: size, users: users, password: password)
        } catch {
            stop()
            throw error
        }
    }

    private func start(size: Int, users: [String], password: String) throws {
        let first = directory + "/n1"
        // One `warbler user add` for every account (opening the node once, not once per user).
        for chunk in stride(from: 0, to: users.count, by: 500).map({ Array(users[$0..<min($0 + 500, users.count)]) }) {
            let add = Process()
            add.executableURL = binary
            add.arguments = ["user", "add"] + chunk + ["--data", first]
            let input = Pipe()
            add.standardInput = input
            add.standardOutput = FileHandle.nullDevice
            try ChildProcesses.shared.launch(add)
            input.fileHandleForWriting.write(Data((password + "\n").utf8))
            try input.fileHandleForWriting.close()
            ChildProcesses.shared.waitUntilExit(add)
            guard add.terminationStatus == 0 else { throw ValidationError("could not create the bench users") }
        }
        let base = Int.random(in: 100...300) * 100  // below the ephemeral port range
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
                try runWarbler(
                    binary,
                    ["cert", "issue", "--node", "\(node)", "--ca", first + "/ca", "--out", data + "/certs"]
                )
                arguments += ["--join", firstPeer]
            }
            let process = Process()
            process.executableURL = binary
            process.arguments = arguments
            process.standardOutput = FileHandle.nullDevice
            try ChildProcesses.shared.launch(process)
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

    /// Waits until every group has all nodes as members (the placement's voters, learners elsewhere) and a
    /// leader, and until leadership has spread: no node leads more than its share of the groups plus one, the
    /// balance the nodes' own placement keeps. Node 1 initialised every group and leads them all at first; the
    /// others take theirs over one group a second each (~45 s for three nodes), and a run measured meanwhile
    /// would measure one node doing the leaders' work of all, and leadership moving under it.
    private func waitUntilFormed(size: Int, peer: String, certificates: String) throws {
        let status = ClusterStatus(binary: binary, peer: peer, certificates: certificates)
        for _ in 0..<360 {
            if let groups = try? status.groups(), groups.count > 1,
                groups.allSatisfy({ $0.members == size && $0.leader != 0 })
            {
                let led = Dictionary(grouping: groups, by: \.leader).mapValues(\.count)
                let share = (groups.count + size - 1) / size
                if led.count == size, led.values.allSatisfy({ $0 <= share + 1 }) {
                    groupsLed = (1...size).map { led[$0] ?? 0 }
                    self.status = status
                    return
                }
            }
            usleep(500_000)
        }
        throw ValidationError("the spawned cluster did not form, or its leadership did not spread")
    }

    /// Kills node `index` (from 0) with SIGKILL — no shutdown of any kind — and starts it again on the same data
    /// and ports; returns once it listens.
    func restart(node index: Int) throws {
        let old = processes[index]
        kill(old.processIdentifier, SIGKILL)
        ChildProcesses.shared.waitUntilExit(old)
        let process = Process()
        process.executableURL = binary
        process.arguments = old.arguments
        process.standardOutput = FileHandle.nullDevice
        try ChildProcesses.shared.launch(process)
        processes[index] = process
        try waitUntilListening(ports[index])
    }

    /// Stops the nodes (SIGTERM, SIGKILL after ``ChildProcesses/stopTimeout``) and removes their data.
    func stop() {
        ChildProcesses.shared.stop(processes)
        ChildProcesses.shared.remove(directory)
    }
}

/// Runs `warbler ARGUMENTS` and returns what it printed; throws unless it exits with 0.
@discardableResult
private func runWarbler(_ binary: URL, _ arguments: [String]) throws -> String {
    let process = Process()
    process.executableURL = binary
    process.arguments = arguments
    let output = Pipe()
    process.standardOutput = output
    try ChildProcesses.shared.launch(process)
    let data = output.fileHandleForReading.readDataToEndOfFile()
    ChildProcesses.shared.waitUntilExit(process)
    guard process.terminationStatus == 0 else { throw ValidationError("warbler \(arguments.first ?? "") failed") }
    return String(decoding: data, as: UTF8.self)
}

/// `warbler cluster status --json` of a spawned cluster: every group's leader and members.
struct ClusterStatus: Sendable {
    let binary: URL
    let peer: String
    let certificates: String

    struct Group {
        var id: UInt32
        /// The leader's node id (0: none).
        var leader: Int
        /// Voters and learners.
        var members: Int
    }

    /// Every group, as the node at `peer` sees them.
    func groups() throws -> [Group] { try read().groups }

    /// Who leads each conversation's partition now.
    func leadership() throws -> Leadership {
        let (partitions, groups) = try read()
        return Leadership(
            partitionCount: partitions,
            leaders: Dictionary(groups.map { ($0.id, $0.leader) }, uniquingKeysWith: { first, _ in first })
        )
    }

    private func read() throws -> (partitions: UInt32, groups: [Group]) {
        let json = try runWarbler(binary, ["cluster", "status", "--json", "--peer", peer, "--certs", certificates])
        guard let object = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
            let groups = object["groups"] as? [[String: Any]]
        else { throw ValidationError("unexpected output of warbler cluster status") }
        let parsed = groups.map { group in
            Group(
                id: UInt32(group["group"] as? Int ?? 0),  // the metadata group's 0 is left out of the JSON
                leader: group["leader"] as? Int ?? 0,
                members: (group["voters"] as? [Any] ?? []).count + (group["learners"] as? [Any] ?? []).count
            )
        }
        return (UInt32(object["partitionCount"] as? Int ?? 0), parsed)
    }
}

/// Which node leads each group of a cluster, at one moment.
struct Leadership: Sendable {
    var partitionCount: UInt32
    /// Group id → the leader's node id (0: none).
    var leaders: [UInt32: Int]

    /// The node id leading `conversation`'s partition, if it has a leader.
    func leader(of conversation: String) -> Int? {
        guard partitionCount > 0 else { return nil }
        let leader = leaders[ChatPartitioning.partition(of: conversation, count: partitionCount)] ?? 0
        return leader == 0 ? nil : leader
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
