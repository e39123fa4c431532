import Dispatch
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Every process the bench starts (spawned nodes and one-off `warbler` commands) and the data folders it
/// creates, so that a run that ends — normally, with an error, or interrupted by SIGINT, SIGTERM or SIGHUP —
/// stops the nodes and removes the folders instead of leaving them running.
final class ChildProcesses: Sendable {
    /// The bench's one registry.
    static let shared = ChildProcesses()

    private struct State: ~Copyable {
        var processes: [Int32: Process] = [:]
        var directories: Set<String> = []
        /// Set by the first stop signal: nothing more is started.
        var interrupted = false
    }

    private let state = Mutex(State())
    private let signalSources = Mutex<[any DispatchSourceSignal]>([])

    /// How long a node has to stop after SIGTERM before it is killed.
    static let stopTimeout: Duration = .seconds(10)

    /// Starts `process` and tracks it until ``stop(_:)``; throws once the bench is being interrupted (no process
    /// starts after the teardown has looked at the list).
    func launch(_ process: Process) throws {
        try state.withLock { state in
            guard !state.interrupted else { throw BenchInterrupted() }
            try process.run()
            state.processes[process.processIdentifier] = process
        }
    }

    /// Waits until `process` (a one-off command) ends, and stops tracking it.
    func waitUntilExit(_ process: Process) {
        process.waitUntilExit()
        stop([process])
    }

    /// Called where the bench would end with an error: once a stop signal has come, the error is the teardown's
    /// doing (a process it stopped), so this waits for the teardown to end the bench with the signal's status.
    func awaitTeardownIfInterrupted() {
        guard state.withLock({ $0.interrupted }) else { return }
        while true { pause() }
    }

    /// Tracks `directory` (a spawned cluster's data) until ``remove(_:)``.
    func own(_ directory: String) {
        _ = state.withLock { $0.directories.insert(directory) }
    }

    /// Stops `processes`: SIGTERM to each, then SIGKILL to any still running after ``stopTimeout``.
    func stop(_ processes: [Process]) {
        for process in processes where process.isRunning { process.terminate() }
        let deadline = ContinuousClock.now + Self.stopTimeout
        for process in processes {
            while process.isRunning && ContinuousClock.now < deadline { usleep(20_000) }
            if process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
            }
        }
        let identifiers = processes.map(\.processIdentifier)
        state.withLock { state in
            for identifier in identifiers { state.processes[identifier] = nil }
        }
    }

    /// Deletes `directory` and stops tracking it.
    func remove(_ directory: String) {
        try? FileManager.default.removeItem(atPath: directory)
        _ = state.withLock { $0.directories.remove(directory) }
    }

    /// From now on SIGINT, SIGTERM and SIGHUP stop every tracked process, remove every tracked folder and exit
    /// with 128 + the signal's number (130 for SIGINT), after one line on standard error.
    func stopOnSignals() {
        signalSources.withLock { sources in
            sources = [SIGINT, SIGTERM, SIGHUP].map { number in
                // The default action would end the bench at once; the source hears the signal instead.
                signal(number, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
                source.setEventHandler { self.interrupt(by: number) }
                source.resume()
                return source
            }
        }
    }

    private func interrupt(by number: Int32) {
        let (processes, directories) = state.withLock { state -> ([Process], Set<String>) in
            let first = !state.interrupted
            state.interrupted = true
            return first ? (Array(state.processes.values), state.directories) : ([], [])
        }
        guard !processes.isEmpty || !directories.isEmpty else { exit(128 + number) }
        let name = number == SIGINT ? "SIGINT" : number == SIGTERM ? "SIGTERM" : "SIGHUP"
        FileHandle.standardError.write(
            Data("\(name): stopping \(processes.count) process(es) the bench started, removing their data…\n".utf8)
        )
        stop(processes)
        for directory in directories { remove(directory) }
        exit(128 + number)
    }
}

/// The bench is being stopped by a signal: no more processes start.
struct BenchInterrupted: Error, CustomStringConvertible {
    var description: String { "the bench is being interrupted" }
}
