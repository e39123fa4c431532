import Foundation
import Synchronization
import Testing

/// `warbler-bench` itself: every scenario runs against a node it spawns from the debug build, and its JSON
/// report holds what the scenario measured (so that a broken scenario, counter or report fails here).
@Suite(.serialized)
struct BenchTests {
    static let binary = NodeProcess.packageRoot.appendingPathComponent(".build/debug/warbler-bench").path

    /// Runs `executable` to its end (with `environment` instead of the test's, when given); returns its exit
    /// status, standard output and standard error.
    func run(
        _ executable: String,
        _ arguments: [String],
        environment: [String: String]? = nil
    ) async throws -> (status: Int32, output: Data, errors: String) {
        let finished = try await ChildProcess.run(executable, arguments, environment: environment)
        return (finished.status, finished.output, finished.errorText)
    }

    /// Runs the bench with `arguments` and returns its parsed JSON report.
    func bench(_ arguments: [String], spawn: String = "single") async throws -> [String: Any] {
        let (status, data, diagnostics) = try await run(
            Self.binary,
            ["--spawn", spawn, "--json", "--quiet", "--seconds", "1", "--warm-up", "0.5"] + arguments
        )
        guard status == 0 else { throw TestFailure("warbler-bench \(arguments) exited \(status): \(diagnostics)") }
        guard let report = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw TestFailure("warbler-bench printed no JSON report: \(String(decoding: data, as: UTF8.self))")
        }
        return report
    }

    func number(_ report: [String: Any], _ key: String) -> Double { (report[key] as? NSNumber)?.doubleValue ?? -1 }
    func latency(_ report: [String: Any], _ key: String) -> [String: Any] { report[key] as? [String: Any] ?? [:] }

    @Test func compareRunsEachBuildInTurnAndPrintsMedians() async throws {
        // bench/compare.sh against the debug build twice (labelled, one with an extra environment variable).
        let debug = NodeProcess.packageRoot.appendingPathComponent(".build/debug").path
        let (status, output, progress) = try await run(
            "/bin/bash",
            [
                NodeProcess.packageRoot.appendingPathComponent("bench/compare.sh").path, "2",
                "--spawn single --senders 1 --window 2 --seconds 0.5 --warm-up 0.2", "one=\(debug)",
                "two=\(debug):WARBLER_UNUSED=1",
            ]
        )
        let printed = String(decoding: output, as: UTF8.self)
        #expect(status == 0, "\(progress)")
        // The builds alternate: one, two, one, two.
        let order = progress.split(separator: "\n").compactMap { $0.split(separator: " ").dropFirst(2).first }
        #expect(order == ["one:", "two:", "one:", "two:"])
        let lines = printed.split(separator: "\n")
        #expect(lines.count == 3)
        for (line, label) in zip(lines, ["one", "two"]) {
            #expect(line.hasPrefix(label) && line.contains("acks/s") && line.contains("delivery p99"), "\(line)")
            let median = line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first
            #expect((Double(median.map(String.init) ?? "") ?? 0) > 0, "\(line)")
        }
        // Then the second build against the first, round by round.
        let paired = lines.last.map(String.init) ?? ""
        #expect(paired.hasPrefix("two vs one: acks/s ") && paired.contains("% per round"), "\(paired)")
        #expect(paired.contains(" of 2 rounds, sign test p = "), "\(paired)")
    }

    @Test func callgrindCountsTheInstructionsOfTheNodeAndOfTheBench() async throws {
        // bench/callgrind.sh against the debug build, a short window: a count per message, the threads it went
        // to, and the functions, from profiles that stay on disk.
        let debug = NodeProcess.packageRoot.appendingPathComponent(".build/debug").path
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("callgrind-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: out) }
        defer { try? FileManager.default.removeItem(atPath: out.path + "-bench") }
        /// Runs the script on `side` (node or bench), its profiles in `folder`.
        func callgrind(
            _ side: String,
            into folder: String
        ) async throws -> (status: Int32, output: Data, errors: String) {
            var environment = ProcessInfo.processInfo.environment
            environment["WINDOW"] = "2"
            environment["TOP"] = "400"
            environment["OUT"] = folder
            environment["PROFILE"] = side
            return try await run(
                "/bin/bash",
                [
                    NodeProcess.packageRoot.appendingPathComponent("bench/callgrind.sh").path, debug, "--",
                    "--senders", "1", "--window", "16",
                ],
                environment: environment
            )
        }
        let (status, output, errors) = try await callgrind("node", into: out.path)
        let printed = String(decoding: output, as: UTF8.self)
        #expect(status == 0, "\(printed)\n\(errors)")
        let lines = printed.split(separator: "\n").map(String.init)
        // "node: N instructions in 2 s, M messages: K instructions per message", K = N / M.
        let figures = (lines.first ?? "").split(separator: " ").compactMap { Int($0.filter(\.isNumber)) }
        #expect(figures.count == 4 && figures[2] > 0, "\(printed)")
        if figures.count == 4, figures[2] > 0 {
            #expect(figures[3] == figures[0] / figures[2] && figures[3] > 10_000, "\(printed)")
        }
        // The apply thread did most of it; every posted message was applied and answered there.
        let apply = lines.first { $0.hasPrefix("  apply ") } ?? ""
        #expect(apply.contains("per message"), "\(printed)")
        #expect(lines.contains { $0.hasPrefix("  client connections ") }, "\(printed)")
        // The threads account for the whole count (each line rounds down).
        let perThread = lines.filter { $0.hasPrefix("  ") && $0.contains(" per message") }.compactMap {
            $0.split(separator: " ").compactMap { Int($0.filter(\.isNumber)) }.first
        }
        if figures.count == 4 {
            #expect(abs(perThread.reduce(0, +) - figures[3]) <= perThread.count, "\(printed)")
        }
        #expect(lines.contains { $0.contains("ChatStateMachine.postMessage") }, "\(printed)")
        let profiles = (try? FileManager.default.contentsOfDirectory(atPath: out.path)) ?? []
        #expect(profiles.contains { $0.hasPrefix("callgrind.out.1-") }, "\(profiles)")
        #expect(!profiles.contains("data"), "the node's data is removed")

        // PROFILE=bench: the client side instead, counted per frame it receives (here an ack and a push for each
        // message), its decoding among the functions.
        let client = try await callgrind("bench", into: out.path + "-bench")
        let report = String(decoding: client.output, as: UTF8.self)
        #expect(client.status == 0, "\(report)\n\(client.errors)")
        #expect(report.hasPrefix("bench: ") && report.contains(" instructions per frame received"), "\(report)")
        #expect(report.contains("FrameCodec.decodeServerFrame"), "\(report)")
    }

    @Test func printAccountsListsTheAccountsAScenarioSignsInAs() async throws {
        // What a node driven with --target needs created first (bench/callgrind.sh creates them from this list).
        for (arguments, expected) in [
            (["--senders", "2"], ["bench-s0", "bench-r0", "bench-s1", "bench-r1"]),
            (["--scenario", "group", "--members", "3"], ["bench-g0-m0", "bench-g0-m1", "bench-g0-m2"]),
        ] {
            let (status, output, errors) = try await run(Self.binary, ["--print-accounts"] + arguments)
            #expect(status == 0, "\(errors)")
            #expect(String(decoding: output, as: UTF8.self).split(separator: "\n").map(String.init) == expected)
        }
    }

    @Test func pairsInClosedAndOpenLoop() async throws {
        let closed = try await bench(["--senders", "2", "--window", "4"])
        #expect(closed["scenario"] as? String == "pairs")
        #expect(number(closed, "acks_per_second") > 0)
        #expect(number(closed, "deliveries_per_second") > 0)
        #expect(number(closed, "errors") == 0)
        let ack = latency(closed, "ack")
        #expect((ack["count"] as? Int ?? 0) > 0)
        #expect((ack["p50_us"] as? Int ?? 0) > 0 && (ack["p50_us"] as? Int ?? 0) <= (ack["p99_us"] as? Int ?? 0))
        #expect((latency(closed, "delivery")["count"] as? Int ?? 0) > 0)
        // One recipient a message: delivered to all is delivered.
        #expect(latency(closed, "delivery_to_all")["count"] as? Int == latency(closed, "delivery")["count"] as? Int)
        #expect((closed["servers"] as? [Any])?.count == 1, "the spawned node's CPU and memory")
        #expect(number(closed["client"] as? [String: Any] ?? [:], "cpu_cores") > 0, "the bench's own CPU")

        // --verify reads every acknowledged message back (the report stays pure JSON and counts them): at least
        // the measured second's acknowledgements, and the warm-up's.
        let verified = try await bench(["--senders", "2", "--window", "4", "--verify"])
        let checked = (verified["extras"] as? [String: Any])?["verified_messages"] as? Int ?? 0
        #expect(checked > 0 && Double(checked) >= number(verified, "acks_per_second"))
        #expect(number(verified, "errors") == 0)

        // Open loop at a rate the debug node sustains: about that many sends, every one acknowledged.
        let open = try await bench(["--senders", "1", "--rate", "50"])
        #expect((35...65).contains(number(open, "sends_per_second")))
        #expect(number(open, "errors") == 0)
        // Between sends the bench waits on its connection's timer: at 50 sends/s it is nearly idle (a pause that
        // returned at once would spin a whole core).
        let client = open["client"] as? [String: Any] ?? [:]
        #expect(client["cpu_cores"] != nil && number(client, "cpu_cores") < 0.5, "\(client)")
    }

    /// `--login-flood`: wrong logins from another address beside the scenario, counted by how the node answered;
    /// the scenario's own users still log in (the SDK retries a busy node) and chat.
    @Test func aLoginFloodRunsBesideTheScenarioAndIsCounted() async throws {
        // Eight seconds: on a debug build, on a machine busy with the other suites (some hashing too), a check can
        // take several.
        let report = try await bench(["--senders", "1", "--window", "4", "--login-flood", "40", "--seconds", "8"])
        #expect(number(report, "acks_per_second") > 0)
        #expect(number(report, "errors") == 0)
        let flood = (report["extras"] as? [String: Any])?["login_flood"] as? [String: Any] ?? [:]
        #expect(flood["connections"] as? Int == 40)
        #expect(flood["source"] as? String == "127.0.0.2")
        // Forty at once: more than the node checks at a time (17 on two cores) and than the address may fail
        // (30): some are checked, the rest refused unchecked, nothing else.
        #expect((flood["checked"] as? Int ?? 0) > 0, "\(flood)")
        #expect((flood["refused"] as? Int ?? 0) > 0, "\(flood)")
        #expect(flood["other"] as? Int == 0, "\(flood)")
        #expect(number(flood, "answered_per_second") > 0)
    }

    /// `restart`: clients logged in with their passwords, the node killed and started again: every client is
    /// back on the session it had (no password checked again), and the report says how long that took.
    @Test func afterARestartEveryClientIsBackOnItsSession() async throws {
        let report = try await bench(["--scenario", "restart", "--users", "6"])
        let restart = (report["extras"] as? [String: Any])?["restart"] as? [String: Any] ?? [:]
        #expect(restart["clients"] as? Int == 6, "\(restart)")
        #expect(restart["resumed"] as? Int == 6, "\(restart)")
        #expect(restart["logged_in_again"] as? Int == 0 && restart["not_back"] as? Int == 0, "\(restart)")
        // Nobody is back before the node listens, and the figures are in order.
        let (started, p50, p99) = (
            number(restart, "node_start_seconds"), number(restart, "back_p50_seconds"),
            number(restart, "back_p99_seconds")
        )
        #expect(started > 0 && started <= p50 && p50 <= p99 && p99 <= number(restart, "all_back_seconds"), "\(restart)")
    }

    /// The progress line: each second's acks and deliveries, and its longest ack and delivery latency — so a
    /// stall shows in the second it happened, not only in the run's percentiles.
    @Test func theProgressLineGivesEachSecondsRatesAndLongestLatencies() async throws {
        let (status, data, progress) = try await run(
            Self.binary,
            ["--spawn", "single", "--json", "--seconds", "2.5", "--warm-up", "0.5", "--senders", "1", "--window", "4"]
        )
        #expect(status == 0, "\(progress)")
        let report = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let pattern =
            #/^\[(\d+) s, (warm-up|measuring)\] acks/s (\d+)  deliveries/s (\d+)  errors (\d+)  max ms ack (\d+\.\d) delivery (\d+\.\d)$/#
        let lines = progress.split(separator: "\n").filter { $0.hasPrefix("[") }
        let seconds = lines.compactMap { try? pattern.wholeMatch(in: String($0))?.output }
        #expect(seconds.count == lines.count && seconds.count >= 2, "\(progress)")
        let measuring = seconds.filter { $0.2 == "measuring" && Int($0.3)! > 0 }
        #expect(!measuring.isEmpty, "\(progress)")
        for second in measuring {
            #expect(Double(second.6)! > 0 && Double(second.7)! > 0, "\(progress)")
        }
        // A second's longest wait is at least the run's median one in some second.
        let medianMilliseconds = number(latency(report, "ack"), "p50_us") / 1000
        #expect(measuring.map { Double($0.6)! }.max()! >= medianMilliseconds - 0.05, "\(progress)")
    }

    /// A spawned cluster: three nodes formed over mutual TLS and measured once leadership has spread over them,
    /// each pair placed so that its sender's node, its partition's leader and its recipient's node differ (every
    /// send forwarded, every delivery from a follower), with every node's CPU and memory, and every acknowledged
    /// message read back from every node.
    @Test func aClusterIsMeasuredOnceLeadershipHasSpread() async throws {
        let report = try await bench(["--senders", "3", "--window", "4", "--verify"], spawn: "cluster:3")
        #expect(report["nodes"] as? Int == 3)
        #expect((report["servers"] as? [Any])?.count == 3, "every node's CPU and memory")
        #expect(number(report, "acks_per_second") > 0)
        #expect(number(report, "errors") == 0)
        let extras = report["extras"] as? [String: Any] ?? [:]
        #expect((extras["verified_messages"] as? Int ?? 0) > 0)
        // 65 groups (the metadata group and 64 partitions): none led by more than its share (22) plus one.
        let led = extras["groups_led"] as? [Int] ?? []
        #expect(led.count == 3 && led.reduce(0, +) == 65 && led.allSatisfy { (1...23).contains($0) }, "\(led)")
        // Each pair's sender, its partition's leader and its recipient are on three different nodes, as connected:
        // the sender on the node after the leader's.
        let placement = extras["pair_nodes"] as? [[Int]] ?? []
        #expect(placement.count == 3, "\(extras)")
        for nodes in placement {
            #expect(nodes.count == 3 && Set(nodes) == [1, 2, 3] && nodes[0] == nodes[1] % 3 + 1, "\(placement)")
        }
    }

    /// On a spawned cluster a group's senders are on a node that does not lead the group's partition, and every
    /// other member still receives each message.
    @Test func aGroupOnAClusterSendsFromANodeThatDoesNotLeadIt() async throws {
        let report = try await bench(
            ["--scenario", "group", "--groups", "2", "--members", "4", "--senders", "2", "--window", "4"],
            spawn: "cluster:3"
        )
        let acks = number(report, "acks_per_second")
        #expect(acks > 0 && number(report, "errors") == 0)
        // Three receivers per message (each group's two senders receive each other's messages too).
        #expect(abs(number(report, "deliveries_per_second") - 3 * acks) <= 0.2 * 3 * acks)
        // Each group's senders are connected to the node after its leader's.
        let placement = (report["extras"] as? [String: Any])?["group_nodes"] as? [[Int]] ?? []
        #expect(placement.count == 2, "\(report)")
        for nodes in placement {
            #expect(
                nodes.count == 2 && (1...3).contains(nodes[1]) && nodes[0] == nodes[1] % 3 + 1,
                "\(placement)"
            )
        }
    }

    @Test func groupDeliversToEveryOtherMember() async throws {
        let report = try await bench(["--scenario", "group", "--members", "4", "--senders", "1"])
        let acks = number(report, "acks_per_second")
        #expect(acks > 0)
        // Three receivers per message (the sender's own push is not a delivery).
        #expect(abs(number(report, "deliveries_per_second") - 3 * acks) <= 0.2 * 3 * acks)
        // Send → the last of the three: one figure a message, never earlier than the deliveries it completes.
        let each = latency(report, "delivery")
        let all = latency(report, "delivery_to_all")
        let completed = all["count"] as? Int ?? 0
        let deliveries = each["count"] as? Int ?? 0
        // A message that did not reach all three by the end counts its one or two deliveries only.
        let partly = Int(number(report, "partly_delivered"))
        #expect(
            completed > 0 && 3 * completed <= deliveries && deliveries <= 3 * completed + 2 * partly,
            "\(all) \(each)"
        )
        #expect((all["p50_us"] as? Int ?? 0) >= (each["p50_us"] as? Int ?? 0), "\(all) \(each)")
        #expect((all["p99_us"] as? Int ?? 0) >= (each["p99_us"] as? Int ?? 0), "\(all) \(each)")
        #expect((all["max_us"] as? Int ?? 0) <= (each["max_us"] as? Int ?? 0), "\(all) \(each)")
    }

    @Test func theNodeAndTheBenchAllocateWithJemalloc() async throws {
        // jemalloc prints its statistics at exit when asked to; glibc's malloc knows no MALLOC_CONF.
        for binary in [NodeProcess.binary, Self.binary] {
            let said = try await run(binary, ["--help"], environment: ["MALLOC_CONF": "stats_print:true"]).errors
            #expect(said.contains("Begin jemalloc statistics"), "\(binary) does not allocate with jemalloc")
        }
    }

    /// The processes whose parent is `parent`, with their command lines.
    func children(of parent: Int32) -> [(pid: Int32, arguments: [String])] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry -> (Int32, [String])? in
            guard let pid = Int32(entry),
                let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return nil }
            // "pid (comm) state ppid …": the command name may hold spaces, so fields count from its ")".
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 2, Int32(fields[1]) == parent,
                let line = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline")
            else { return nil }
            return (pid, line.split(separator: 0).map { String(decoding: $0, as: UTF8.self) })
        }
    }

    /// True while `pid` runs (not gone, not a zombie: a zombie's command line is empty).
    func isRunning(_ pid: Int32) -> Bool {
        !(FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") ?? Data()).isEmpty
    }

    @Test(arguments: [SIGINT, SIGTERM])
    func aStopSignalStopsTheSpawnedNodesAndRemovesTheirData(signal: Int32) async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = ["--spawn", "single", "--senders", "1", "--seconds", "600", "--quiet"]
        // Standard error is read as it comes: the spawned node shares it, so it may never reach its end.
        let errors = Pipe()
        let said = Mutex(Data())
        errors.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            said.withLock { $0.append(data) }
        }
        defer { errors.fileHandleForReading.readabilityHandler = nil }
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        // Until the node runs and has its data folder, and a little longer (the bench is connecting or measuring).
        var node: (pid: Int32, arguments: [String])?
        for _ in 0..<600 where node == nil {
            node = children(of: process.processIdentifier).first { $0.arguments.dropFirst().first == "serve" }
            if node == nil { try await Task.sleep(nanoseconds: 50_000_000) }
        }
        let spawned = try #require(node, "the bench started no node")
        let data = try #require(spawned.arguments.firstIndex(of: "--data").map { spawned.arguments[$0 + 1] })
        let folder = URL(fileURLWithPath: data).deletingLastPathComponent().path
        #expect(FileManager.default.fileExists(atPath: folder))
        try await Task.sleep(nanoseconds: 2_000_000_000)

        kill(process.processIdentifier, signal)
        let stopped = ContinuousClock.now
        while process.isRunning && ContinuousClock.now - stopped < .seconds(30) {
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        #expect(!process.isRunning, "the bench is still running 30 s after the signal")
        #expect(process.terminationStatus == 128 + signal)
        try await Task.sleep(nanoseconds: 200_000_000)
        let diagnostics = String(decoding: said.withLock { $0 }, as: UTF8.self)
        #expect(diagnostics.contains("stopping 1 process(es)"), "\(diagnostics)")
        #expect(!isRunning(spawned.pid), "the spawned node outlived the bench")
        if isRunning(spawned.pid) { kill(spawned.pid, SIGKILL) }
        #expect(!FileManager.default.fileExists(atPath: folder), "the spawned node's data folder is left behind")
        try? FileManager.default.removeItem(atPath: folder)
    }

    @Test func syncMixedAndConnections() async throws {
        let sync = try await bench(["--scenario", "sync", "--backlog", "300", "--window", "8"])
        let extras = sync["extras"] as? [String: Any] ?? [:]
        #expect(extras["backlog"] as? Int == 300)
        #expect(((extras["synced_per_second"] as? NSNumber)?.doubleValue ?? 0) > 0)

        let mixed = try await bench(["--scenario", "mixed", "--users", "6", "--seed", "7"])
        #expect(number(mixed, "acks_per_second") > 0)
        #expect(number(mixed, "errors") == 0)
        // Direct conversations and groups: fewer messages completed than deliveries made.
        let mixedAll = latency(mixed, "delivery_to_all")["count"] as? Int ?? 0
        #expect(mixedAll > 0 && mixedAll < latency(mixed, "delivery")["count"] as? Int ?? 0)

        let connections = try await bench([
            "--scenario", "connections", "--connections", "200", "--source-addresses", "2",
        ])
        let opened = connections["extras"] as? [String: Any] ?? [:]
        #expect(opened["connections"] as? Int == 200)
        #expect(opened["server_bytes_per_connection"] is NSNumber, "the node's memory per connection")
        #expect(number(connections, "errors") == 0)
    }
}
