import Dispatch
import Foundation
import Synchronization
import Testing

@testable import WarblerCluster
@testable import WarblerStorage

/// The serial loop the Raft scheduler and the apply queue run on: one named thread, work in order, `sync` that
/// waits (and runs inline on the loop), timers.
@Suite struct SerialLoopTests {
    @Test func workRunsInOrderOnTheLoopsOwnNamedThread() {
        let loop = SerialLoop(name: "test-serial")
        let seen = Mutex<(values: [Int], threads: Set<String>)>(([], []))
        for value in 0..<1_000 {
            loop.async {
                let name = Thread.current.name ?? ""
                seen.withLock {
                    $0.values.append(value)
                    $0.threads.insert(name)
                }
            }
        }
        // sync runs after everything handed over before it.
        let count = loop.sync { seen.withLock { $0.values.count } }
        #expect(count == 1_000)
        let (values, threads) = seen.withLock { $0 }
        #expect(values == Array(0..<1_000))
        #expect(threads == ["test-serial"])
    }

    @Test func syncWaitsForSlowWorkAndReturnsItsValue() {
        let loop = SerialLoop(name: "test-sync")
        let finished = Atomic<Bool>(false)
        loop.async {
            Thread.sleep(forTimeInterval: 0.05)
            finished.store(true, ordering: .sequentiallyConsistent)
        }
        let observed = loop.sync { finished.load(ordering: .sequentiallyConsistent) }
        #expect(observed)
        #expect(loop.sync { 6 * 7 } == 42)
    }

    @Test func syncOnTheLoopRunsInlineInsteadOfDeadlocking() {
        let loop = SerialLoop(name: "test-nested")
        let nested = loop.sync { loop.sync { 7 } + 1 }
        #expect(nested == 8)
    }

    @Test func delayedWorkRunsNoEarlierThanItsDelay() {
        let loop = SerialLoop(name: "test-after")
        let ran = DispatchSemaphore(value: 0)
        let start = DispatchTime.now()
        let elapsed = Mutex<UInt64>(0)
        loop.after(.milliseconds(50)) {
            elapsed.withLock { $0 = DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds }
            ran.signal()
        }
        #expect(ran.wait(timeout: .now() + 10) == .success)
        #expect(elapsed.withLock { $0 } >= 50_000_000)
        // No delay runs at once.
        loop.after(.zero) { ran.signal() }
        #expect(ran.wait(timeout: .now() + 10) == .success)
    }

    @Test func rocksDBCountsNothingOnTheLoop() throws {
        let path = NSTemporaryDirectory() + "warbler-serial-loop-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let database = try Database(path: path)
        let loop = SerialLoop(name: "test-rocksdb")
        let comparisons = loop.sync {
            let batch = WriteBatch()
            for index in 0..<200 { batch.put(Array("key-\(index * 7919 % 200)".utf8), [1], in: database.defaultFamily) }
            try? database.write(batch, sync: false)
            return Database.keyComparisonsOnThisThread()
        }
        #expect(comparisons == 0)
    }

    @Test func repeatingWorkStopsWhenCancelled() {
        let loop = SerialLoop(name: "test-repeat")
        let ticks = Atomic<Int>(0)
        let task = loop.repeating(every: .milliseconds(2)) { ticks.add(1, ordering: .relaxed) }
        let deadline = Date().addingTimeInterval(10)
        while ticks.load(ordering: .relaxed) < 5 && Date() < deadline { Thread.sleep(forTimeInterval: 0.002) }
        #expect(ticks.load(ordering: .relaxed) >= 5)
        loop.sync { task.cancel() }
        let afterCancel = ticks.load(ordering: .relaxed)
        Thread.sleep(forTimeInterval: 0.05)
        #expect(ticks.load(ordering: .relaxed) == afterCancel)
    }
}
