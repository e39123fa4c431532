import ArgumentParser
import Foundation
import NIOCore
import NIOPosix
import WarblerClient
import WarblerWire

#if canImport(Glibc)
import Glibc
#endif

/// `warbler-bench`: drives a real Warbler node or cluster over the client protocol — scenarios `pairs`,
/// `group`, `connections`, `sync` and `mixed`, in closed loop (a window of unacknowledged sends per connection)
/// or open loop (a fixed rate, latency from each send's intended time) — and reports sends, acks, deliveries
/// and errors per second, ack and end-to-end delivery latency percentiles (HdrHistogram; per recipient and, for
/// messages with several, until the last has it), and the CPU and
/// memory of local server processes and of the bench itself; as a table, as JSON (`--json`), and as an SVG
/// percentile plot (`--svg`).
@main
struct WarblerBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warbler-bench",
        abstract: "Measure a Warbler node or cluster over the real client protocol.",
        discussion: """
            Scenarios:
              pairs        P direct conversations (--senders P), one sender each, each
                           recipient online; on a spawned cluster each pair's sender,
                           partition leader and recipient are on different nodes
              group        G groups (--groups) of M members (--members), S senders each
                           (--senders), all online; on a spawned cluster a group's
                           senders are on a node that does not lead it
              connections  C idle authenticated connections (--connections) from several
                           127.0.0.x addresses, plus light traffic; reports connect rate
                           and server memory per connection
              sync         a member comes back to a backlog of N messages (--backlog)
                           and syncs it
              mixed        U users (--users), Zipf-popular direct and group
                           conversations; sends, receipts, history reads
              restart      U clients (--users), each logged in with its password;
                           the node is killed and started again (--spawn single);
                           how long until every client is back, and how
            With --spawn the bench starts the nodes itself and creates the accounts it
            needs. With --target the accounts must exist (password --password); list
            them with --print-accounts.
            """
    )

    enum Scenario: String, ExpressibleByArgument, CaseIterable {
        case pairs, group, connections, sync, mixed, restart
    }

    @Option(help: "pairs, group, connections, sync, mixed or restart.") var scenario: Scenario = .pairs
    @Option(help: "HOST:PORT[,HOST:PORT…] of running nodes (connections are spread over them round-robin).")
    var target: String?
    @Option(
        help:
            "'single' or 'cluster:N': start nodes from the built binary with fresh data folders (a cluster is measured once leadership has spread over its nodes)."
    )
    var spawn: String?
    @Option(help: "pairs: conversations, one sender each (default 32); group: senders per group (default 1).")
    var senders: Int?
    @Option(help: "group: number of groups.") var groups = 1
    @Option(help: "group: members per group (every member online).") var members = 11
    @Option(help: "mixed, restart: users, one connection each.") var users = 40
    @Option(help: "connections: idle authenticated connections.") var connections = 10_000
    @Option(help: "connections: 127.0.0.x source addresses to spread them over (default: one per 10,000).")
    var sourceAddresses: Int?
    @Option(help: "sync: messages waiting for the returning member.") var backlog = 10_000
    @Option(help: "Closed loop: unacknowledged sends per sending connection.") var window = 1
    @Option(help: "Open loop: total sends (mixed: operations) per second, paced in 0.5 ms steps; replaces the window.")
    var rate: Double?
    @Option(help: "Measured seconds.") var seconds = 10.0
    @Option(help: "Warm-up seconds before measuring.") var warmUp = 1.0
    @Option(help: "Payload bytes (at least 8: the send time travels in the payload).") var payload = 128
    @Option(help: "Seed of every random choice (mixed scenario, conversation shapes).") var seed: UInt64 = 1
    @Option(help: "Password of the bench users.") var password = "bench-password-not-secret"
    @Option(help: "Local server process ids to report CPU and memory of (with --target).") var serverPid: [Int32] = []
    @Flag(help: "Print the result as JSON.") var json = false
    @Option(help: "Write a latency percentile plot (SVG) to this file.") var svg: String?
    @Flag(help: "No progress line on standard error.") var quiet = false
    @Flag(
        help: """
            pairs only: retry failed sends with the same client message id until acknowledged, then check that \
            every node holds every acknowledged message at its seq, gap-free and in one order (exit 1 if not).
            """
    )
    var verify = false
    @Option(
        help:
            "Connections that keep failing password logins (unknown names) from --login-flood-from while the scenario runs."
    )
    var loginFlood = 0
    @Option(help: "Local source address of the login flood (another 127.0.0.x than the scenario's).")
    var loginFloodFrom = "127.0.0.2"
    @Flag(help: "Print the accounts the scenario signs in as, one per line, and exit (create them before --target).")
    var printAccounts = false

    func validate() throws {
        guard payload >= 8 else { throw ValidationError("--payload must be at least 8 bytes") }
        guard window >= 1 else { throw ValidationError("--window must be at least 1") }
        if let rate, rate <= 0 { throw ValidationError("--rate must be positive") }
        if verify && scenario != .pairs { throw ValidationError("--verify applies to the pairs scenario") }
        guard loginFlood >= 0 else { throw ValidationError("--login-flood must not be negative") }
        if scenario == .restart && spawn != "single" {
            throw ValidationError("the restart scenario restarts a node it spawned: give --spawn single")
        }
    }

    var pairCount: Int { senders ?? 32 }
    var sendersPerGroup: Int { senders ?? 1 }
    var shape: LoadShape { rate.map { .open(ratePerSecond: $0) } ?? .closed(window: window) }

    var loadDescription: String {
        switch scenario {
        case .sync: "closed loop, window \(window)"
        case .connections: "idle connections + open loop, 50 msgs/s"
        case .restart: "kill -9 and restart of the node"
        default: shape.description
        }
    }

    /// The accounts the scenario logs in as.
    var accounts: [String] {
        switch scenario {
        case .pairs: PairsScenario.users(pairs: pairCount)
        case .group: GroupScenario.users(groups: groups, members: members)
        case .connections: ConnectionsScenario.users
        case .sync: SyncScenario.users
        case .mixed, .restart: MixedScenario.users(count: users)
        }
    }

    func run() async throws {
        if printAccounts {
            print(accounts.joined(separator: "\n"))
            return
        }
        raiseFileLimit()
        // Ctrl-C (or SIGTERM, SIGHUP) stops the nodes the bench started and removes their data before it exits.
        ChildProcesses.shared.stopOnSignals()
        do {
            try await runScenario()
        } catch {
            ChildProcesses.shared.awaitTeardownIfInterrupted()
            throw error
        }
    }

    func runScenario() async throws {
        var spawned: SpawnedCluster?
        var targets: [Fleet.Target] = []
        if let spawn {
            let size: Int
            if spawn == "single" {
                size = 1
            } else if spawn.hasPrefix("cluster:"), let count = Int(spawn.dropFirst("cluster:".count)), count >= 1 {
                size = count
            } else {
                throw ValidationError("--spawn is 'single' or 'cluster:N'")
            }
            progress(
                "starting \(size) node(s) and creating \(accounts.count) accounts…"
                    + (size > 1 ? " (then waiting until leadership has spread over the nodes, about a minute)" : "")
            )
            let cluster = try SpawnedCluster(size: size, users: accounts, password: password)
            spawned = cluster
            targets = cluster.ports.map { Fleet.Target(host: "127.0.0.1", port: $0) }
        } else if let target {
            for address in target.split(separator: ",") {
                guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...])
                else { throw ValidationError("--target takes HOST:PORT[,HOST:PORT…]") }
                targets.append(Fleet.Target(host: String(address[..<colon]), port: port))
            }
        }
        guard !targets.isEmpty else { throw ValidationError("give --target HOST:PORT[,…] or --spawn single|cluster:N") }
        defer { spawned?.stop() }
        let eventLoops = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        var fleet = Fleet(targets: targets, password: password, eventLoops: eventLoops)
        if let status = spawned?.status { fleet.leadership = { try status.leadership() } }
        let pids = spawned?.pids ?? serverPid
        var report: BenchReport
        // The flood starts before the scenario connects its users: they log in under attack too.
        let flood = loginFlood > 0 ? LoginFlood(connections: loginFlood, from: loginFloodFrom, to: targets) : nil
        if flood != nil { progress("flooding the node(s) with wrong logins from \(loginFloodFrom)…") }
        do {
            report = try await measure(fleet: fleet, pids: pids, spawned: spawned)
            report.extras.loginFlood = await flood?.stop()
            if let led = spawned?.groupsLed, !led.isEmpty { report.extras.groupsLed = led }
            try? await eventLoops.shutdownGracefully()
        } catch {
            // A stop signal's teardown stops the nodes, so the scenario fails: the teardown ends the bench. Its
            // clients are still reconnecting on the event loops meanwhile, which must not shut down under them
            // (a connect on a loop that has shut down leaks a promise, and a debug build traps on it).
            ChildProcesses.shared.awaitTeardownIfInterrupted()
            _ = await flood?.stop()
            try? await eventLoops.shutdownGracefully()
            throw error
        }
        if json { print(report.json) } else { print(report.table) }
        if let svg {
            try report.svg.write(toFile: svg, atomically: true, encoding: .utf8)
            progress("latency plot written to \(svg)")
        }
    }

    func measure(fleet: Fleet, pids: [Int32], spawned: SpawnedCluster?) async throws -> BenchReport {
        progress("connecting \(accounts.count) client(s)…")
        // The window opens once the scenario is set up: counters are created right before the load starts.
        var counters = RunCounters(warmUpSeconds: warmUp, seconds: seconds)
        var extras = ScenarioExtras()
        var measuredSeconds = seconds
        // A restarted node is another process: its usage is not sampled.
        let sampler = UsageSampler(serverPIDs: scenario == .restart ? [] : pids)
        let sampleServers: (RunCounters) -> Void = { sampler.schedule(start: $0.window.start, end: $0.window.end) }
        let verified = verify ? AcknowledgedMessages() : nil
        switch scenario {
        case .pairs:
            counters = try await PairsScenario.prepareAndRun(
                fleet: fleet,
                pairs: pairCount,
                shape: shape,
                payloadBytes: payload,
                warmUp: warmUp,
                seconds: seconds,
                progress: !quiet,
                verify: verified,
                placed: { extras.pairNodes = $0 },
                onStart: sampleServers
            )
            if let verified {
                extras.verifiedMessages = try await check(verified, fleet: fleet)
            }
        case .group:
            counters = try await GroupScenario.prepareAndRun(
                fleet: fleet,
                groups: groups,
                members: members,
                sendersPerGroup: sendersPerGroup,
                shape: shape,
                payloadBytes: payload,
                warmUp: warmUp,
                seconds: seconds,
                progress: !quiet,
                placed: { extras.groupNodes = $0 },
                onStart: sampleServers
            )
        case .mixed:
            counters = try await MixedScenario.prepareAndRun(
                fleet: fleet,
                userCount: users,
                shape: shape,
                payloadBytes: payload,
                seed: seed,
                warmUp: warmUp,
                seconds: seconds,
                progress: !quiet,
                onStart: sampleServers
            )
        case .connections:
            (counters, extras) = try await ConnectionsScenario.run(
                fleet: fleet,
                connections: connections,
                sourceAddresses: sourceAddresses ?? (connections / 10_000 + 1),
                serverPIDs: pids,
                payloadBytes: payload,
                warmUp: warmUp,
                seconds: seconds,
                progress: !quiet,
                onStart: sampleServers
            )
        case .restart:
            guard let spawned else { throw ValidationError("the restart scenario needs --spawn single") }
            sampler.schedule(start: monotonicNanoseconds(), end: nil)
            let started = monotonicNanoseconds()
            extras.restart = try await RestartScenario.run(
                fleet: fleet,
                cluster: spawned,
                users: accounts,
                patience: max(seconds, 120),
                progress: progress
            )
            measuredSeconds = Double(monotonicNanoseconds() - started) / 1e9
        case .sync:
            sampler.schedule(start: monotonicNanoseconds(), end: nil)
            let started = monotonicNanoseconds()
            extras = try await SyncScenario.run(
                fleet: fleet,
                backlog: backlog,
                window: window,
                payloadBytes: payload,
                counters: counters
            )
            measuredSeconds = Double(monotonicNanoseconds() - started) / 1e9
        }
        let (servers, client) = await sampler.finish()
        let date = ISO8601DateFormatter().string(from: Date())
        return BenchReport(
            scenario: scenario.rawValue,
            date: date,
            nodes: fleet.targets.count,
            load: loadDescription,
            seconds: measuredSeconds,
            payloadBytes: payload,
            seed: seed,
            clientConnections: scenario == .connections ? ConnectionsScenario.tokenUsers : accounts.count,
            sendsPerSecond: Double(counters.sends.load(ordering: .relaxed)) / measuredSeconds,
            acksPerSecond: Double(counters.acks.load(ordering: .relaxed)) / measuredSeconds,
            deliveriesPerSecond: Double(counters.deliveries.load(ordering: .relaxed)) / measuredSeconds,
            readsPerSecond: Double(counters.reads.load(ordering: .relaxed)) / measuredSeconds,
            receiptsPerSecond: Double(counters.receipts.load(ordering: .relaxed)) / measuredSeconds,
            errors: counters.errors.load(ordering: .relaxed),
            firstError: counters.firstErrorDescription,
            ack: counters.ack.summary,
            delivery: counters.delivery.summary,
            deliveryToAll: counters.deliveryToAll.summary,
            partlyDelivered: counters.incompleteDeliveries,
            read: counters.read.summary,
            servers: servers,
            client: client,
            extras: extras
        )
    }

    func progress(_ line: String) {
        if !quiet { FileHandle.standardError.write(Data((line + "\n").utf8)) }
    }

    /// Many connections need many descriptors (the spawned nodes inherit the limit).
    func raiseFileLimit() {
        // With CAP_SYS_RESOURCE the hard limit itself goes up (the nodes the bench spawns inherit it); otherwise
        // the soft limit goes as far as the hard one.
        var wanted = rlimit(rlim_cur: 1_048_576, rlim_max: 1_048_576)
        if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &wanted) != 0 { _ = OpenFileLimit.raise() }
    }
}
