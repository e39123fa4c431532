import ArgumentParser
import Foundation
import WarblerSimulation

/// `warbler-sim`: deterministic simulations of Warbler's replication.
@main
struct WarblerSim: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warbler-sim",
        abstract: "Deterministic, seeded fault-injection simulations.",
        subcommands: [Raft.self]
    )

    struct Raft: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Simulate one Raft group under faults and check every invariant.",
            discussion: "Exits 0 only if every invariant held. The same seed replays the same run exactly."
        )

        @Option(help: "The seed of every random choice.") var seed: UInt64
        @Option(help: "Initial voters.") var nodes: Int = 3
        @Option(help: "Simulated steps.") var steps: Int = 3000
        @Option(help: "Seeds to run, starting at --seed (a soak).") var count: Int = 1
        @Option(help: "Write the client history as JSON Lines to this file (single seed only).") var history: String?
        @Flag(help: "Print every violation, not just the first ten.") var verbose = false
        @Flag(help: "Print role changes, faults and membership changes as they happen.") var trace = false
        @Option(help: "Where nodes keep their logs: memory, or rocksdb (Warbler's RaftLogStore).") var storage =
            "memory"

        func validate() throws {
            guard (1...9).contains(nodes) else { throw ValidationError("--nodes must be between 1 and 9") }
            guard steps > 0 else { throw ValidationError("--steps must be positive") }
            guard count > 0 else { throw ValidationError("--count must be positive") }
            if history != nil && count != 1 { throw ValidationError("--history needs --count 1") }
            if SimulationOptions.StorageKind(rawValue: storage) == nil {
                throw ValidationError("--storage must be memory or rocksdb")
            }
        }

        func run() throws {
            var failed: [UInt64] = []
            for offset in 0..<UInt64(count) {
                var options = SimulationOptions(seed: seed &+ offset, nodes: nodes, steps: steps)
                options.trace = trace
                options.storage = SimulationOptions.StorageKind(rawValue: storage) ?? .memory
                let report = RaftSimulation(options: options).run()
                print(report.summary)
                if !report.passed {
                    failed.append(options.seed)
                    for violation in report.violations.prefix(verbose ? Int.max : 10) { print("  \(violation)") }
                    print("  replay: warbler-sim raft --seed \(options.seed) --nodes \(nodes) --steps \(steps)")
                }
                if let history {
                    try HistoryFile.encode(report.history).write(toFile: history, atomically: true, encoding: .utf8)
                }
            }
            if !failed.isEmpty {
                print("failed seeds: \(failed.map(String.init).joined(separator: " "))")
                throw ExitCode.failure
            }
        }
    }
}
