import Testing
import WarblerSimulation

/// The seeded fault-injection simulation: every seed must hold every invariant.
/// Serialized: hundreds of CPU-bound seeds would otherwise take every thread of the shared pool, and the
/// integration tests running beside them (real processes, timeouts) would starve.
@Suite(.serialized)
struct SimulationTests {
    /// 300 seeds in CI: 150 three-node and 150 five-node groups. `make soak` runs thousands more.
    @Test(arguments: 1...150)
    func threeNodesHoldEveryInvariant(seed: Int) {
        let report = RaftSimulation(options: SimulationOptions(seed: UInt64(seed), nodes: 3, steps: 2000)).run()
        #expect(report.violations.isEmpty, "\(report.summary)\n\(report.violations.prefix(5).joined(separator: "\n"))")
        #expect(report.commits > 0, "\(report.summary)")
    }

    @Test(arguments: 1001...1150)
    func fiveNodesHoldEveryInvariant(seed: Int) {
        let report = RaftSimulation(options: SimulationOptions(seed: UInt64(seed), nodes: 5, steps: 2000)).run()
        #expect(report.violations.isEmpty, "\(report.summary)\n\(report.violations.prefix(5).joined(separator: "\n"))")
        #expect(report.commits > 0, "\(report.summary)")
    }

    /// The broker's own RocksDB log storage (`RaftLogStore`, every node a group in one database) under the same
    /// faults: every crash reloads the log from disk.
    @Test(arguments: 2001...2020)
    func rocksDBLogsHoldEveryInvariant(seed: Int) {
        var options = SimulationOptions(seed: UInt64(seed), nodes: seed % 2 == 0 ? 3 : 5, steps: 2000)
        options.storage = .rocksdb
        let report = RaftSimulation(options: options).run()
        #expect(report.violations.isEmpty, "\(report.summary)\n\(report.violations.prefix(5).joined(separator: "\n"))")
        #expect(report.commits > 0, "\(report.summary)")
    }

    @Test func rocksDBAndMemoryLogsBehaveAlike() {
        for seed in UInt64(3)...5 {
            var options = SimulationOptions(seed: seed, nodes: 3, steps: 1500)
            let memory = RaftSimulation(options: options).run()
            options.storage = .rocksdb
            let rocksDB = RaftSimulation(options: options).run()
            #expect(memory.history == rocksDB.history, "seed \(seed)")
            #expect(memory.commits == rocksDB.commits, "seed \(seed)")
        }
    }

    @Test func aSeedReplaysExactly() {
        let options = SimulationOptions(seed: 77, nodes: 5, steps: 1500)
        let first = RaftSimulation(options: options).run()
        let second = RaftSimulation(options: options).run()
        #expect(first.summary == second.summary)
        #expect(first.history == second.history)
        let other = RaftSimulation(options: SimulationOptions(seed: 78, nodes: 5, steps: 1500)).run()
        #expect(other.history != first.history)
    }

    @Test func faultsAreActuallyInjected() {
        var totals: [String: Int] = [:]
        for seed in UInt64(1)...10 {
            let report = RaftSimulation(options: SimulationOptions(seed: seed, nodes: 3, steps: 3000)).run()
            for (kind, count) in report.faults { totals[kind, default: 0] += count }
        }
        for kind in [
            "drop", "duplicate", "delay", "crash", "restart", "pause", "partition", "conf_change", "compaction",
            "snapshot_installed",
        ] {
            #expect(totals[kind, default: 0] > 0, "no \(kind) in 10 seeds: \(totals)")
        }
    }

    @Test func theHistoryRoundTripsThroughJSONLinesAndChecksOut() throws {
        let report = RaftSimulation(options: SimulationOptions(seed: 5, nodes: 3, steps: 2000)).run()
        let text = HistoryFile.encode(report.history)
        let decoded = try HistoryFile.decode(text)
        #expect(decoded == report.history)
        #expect(HistoryChecker.check(decoded).isEmpty)
        #expect(decoded.contains { $0.type == .ok && $0.f == .read })
        #expect(decoded.contains { $0.type == .ok && $0.f == .append })
        let firstLine = text.split(separator: "\n").first.map(String.init) ?? ""
        #expect(firstLine.hasPrefix("{\"f\":"))
        #expect(firstLine.contains("\"process\":") && firstLine.contains("\"type\":\"invoke\""))
    }
}

/// The history checker must reject every kind of anomaly, or the simulation proves nothing.
struct HistoryCheckerTests {
    func append(_ process: Int, _ value: Int, _ outcome: HistoryEvent.Kind) -> [HistoryEvent] {
        [
            HistoryEvent(process: process, type: .invoke, f: .append, value: .single(value)),
            HistoryEvent(
                process: process,
                type: outcome,
                f: .append,
                value: .single(value),
                index: outcome == .ok ? UInt64(value) : nil
            ),
        ]
    }

    func read(_ process: Int, _ values: [Int]) -> [HistoryEvent] {
        [
            HistoryEvent(process: process, type: .invoke, f: .read, value: .none),
            HistoryEvent(process: process, type: .ok, f: .read, value: .list(values)),
        ]
    }

    @Test func aValidHistoryPasses() {
        let history = append(0, 1, .ok) + append(1, 2, .info) + read(2, [1]) + append(0, 3, .ok) + read(2, [1, 2, 3])
        #expect(HistoryChecker.check(history).isEmpty)
    }

    @Test func aReadMissingAnAcknowledgedAppendFails() {
        let history = append(0, 1, .ok) + read(1, [])
        #expect(HistoryChecker.check(history).contains { $0.description.contains("misses 1") })
    }

    @Test func concurrentAppendsMayBeMissing() {
        // The read began before the append completed: it may or may not see it.
        let history = [
            HistoryEvent(process: 0, type: .invoke, f: .append, value: .single(1)),
            HistoryEvent(process: 1, type: .invoke, f: .read, value: .none),
            HistoryEvent(process: 0, type: .ok, f: .append, value: .single(1), index: 2),
            HistoryEvent(process: 1, type: .ok, f: .read, value: .list([])),
        ]
        #expect(HistoryChecker.check(history).isEmpty)
    }

    @Test func readsThatAreNotPrefixesOfOneSequenceFail() {
        let history = append(0, 1, .info) + append(0, 2, .info) + read(1, [1, 2]) + read(1, [2, 1])
        #expect(HistoryChecker.check(history).contains { $0.description.contains("diverges") })
    }

    @Test func aValueNoClientAppendedFails() {
        #expect(HistoryChecker.check(read(0, [42])).contains { $0.description.contains("never appended") })
    }

    @Test func aValueWhoseAppendFailedMustNotAppear() {
        let history = append(0, 1, .fail) + read(1, [1])
        #expect(HistoryChecker.check(history).contains { $0.description.contains("failed") })
    }

    @Test func aDuplicatedValueFails() {
        let history = append(0, 1, .ok) + read(1, [1, 1])
        #expect(HistoryChecker.check(history).contains { $0.description.contains("twice") })
    }

    @Test func aLaterReadSeeingLessThanAnEarlierOneFails() {
        let history = append(0, 1, .info) + read(1, [1]) + read(2, [])
        #expect(HistoryChecker.check(history).contains { $0.description.contains("fewer") })
    }

    @Test func malformedLinesAreReported() {
        #expect(throws: HistoryViolation.self) { try HistoryFile.decode("{\"process\":1}\n") }
    }
}
