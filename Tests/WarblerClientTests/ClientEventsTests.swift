import Synchronization
import Testing
import WarblerWire

@testable import WarblerClient

struct ClientEventsTests {
    func message(_ seq: Int) -> ClientEvent { .message(.with { $0.seq = UInt64(seq) }) }

    func seqs(_ events: [ClientEvent]) -> [UInt64] {
        events.compactMap { if case .message(let message) = $0 { message.seq } else { nil } }
    }

    /// Runs `body` in a task and returns its result, or nil after 10 s (a consumer that is never resumed fails
    /// the test instead of stalling the suite).
    func result<T: Sendable>(of body: @escaping @Sendable () async -> T) async throws -> T? {
        let box = Mutex<T?>(nil)
        Task { box.withLock { [value = await body()] in $0 = value } }
        for _ in 0..<1_000 {
            if let value = box.withLock({ $0 }) { return value }
            try await Task.sleep(for: .milliseconds(10))
        }
        return nil
    }

    @Test func bufferedEventsComeInOrderAndALaterLoopGetsWhatAnEarlierOneLeft() async {
        let queue = EventQueue()
        let events = ClientEvents(queue: queue)
        for seq in 1...5 { queue.yield(message(seq)) }
        var first: [ClientEvent] = []
        for await event in events {
            first.append(event)
            if first.count == 2 { break }
        }
        var rest: [ClientEvent] = []
        for await event in events {
            rest.append(event)
            if rest.count == 3 { break }
        }
        #expect(seqs(first) == [1, 2])
        #expect(seqs(rest) == [3, 4, 5])
    }

    @Test func aWaitingConsumerIsHandedTheNextEvent() async throws {
        let queue = EventQueue()
        let events = ClientEvents(queue: queue)
        Task {
            // Yields arrive while the consumer waits, and between its turns.
            for seq in 1...3 {
                try await Task.sleep(for: .milliseconds(20))
                queue.yield(message(seq))
            }
        }
        let received = try await result {
            var iterator = events.makeAsyncIterator()
            var received: [ClientEvent] = []
            while received.count < 3, let event = await iterator.next() { received.append(event) }
            return received
        }
        #expect(seqs(try #require(received)) == [1, 2, 3])
    }

    @Test func cancellingAWaitingConsumerEndsItsLoopAndKeepsLaterEventsForTheNext() async throws {
        let queue = EventQueue()
        let events = ClientEvents(queue: queue)
        let consumer = Task {
            var received = 0
            for await _ in events { received += 1 }
            return received
        }
        try await Task.sleep(for: .milliseconds(50))
        consumer.cancel()
        #expect(try await result { await consumer.value } == 0, "the cancelled consumer went on waiting")
        queue.yield(message(7))
        var iterator = events.makeAsyncIterator()
        #expect(seqs([await iterator.next()].compactMap { $0 }) == [7])
        // A task cancelled before it asks gets nil at once.
        let cancelled = try await result { () -> Bool in
            withUnsafeCurrentTask { $0?.cancel() }
            var iterator = events.makeAsyncIterator()
            return await iterator.next() == nil
        }
        #expect(cancelled == true)
    }

    @Test func finishingEndsTheLoopAfterTheBufferedEvents() async {
        let queue = EventQueue()
        let events = ClientEvents(queue: queue)
        queue.yield(message(1))
        queue.yield(.reconnected)
        queue.finish()
        queue.yield(message(2))
        var received: [ClientEvent] = []
        for await event in events { received.append(event) }
        #expect(received.count == 2)
        #expect(seqs(received) == [1])
        let waiting = Task { () -> ClientEvent? in
            var iterator = events.makeAsyncIterator()
            return await iterator.next()
        }
        #expect(await waiting.value == nil)
    }
}
