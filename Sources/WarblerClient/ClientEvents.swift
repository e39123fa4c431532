import NIOCore
import Synchronization

/// A client's pushes and connection changes, in arrival order (``WarblerClient/events``).
///
/// One task iterates at a time; a loop that ends (or whose task is cancelled) leaves the events that follow
/// for the next loop. An event that is already buffered is returned without suspending the task — a client
/// receiving a burst of pushes pays a lock per event, not a task switch (`AsyncStream` suspends on every
/// element, which made it the largest cost of a receiving client; docs/performance.md).
public struct ClientEvents: AsyncSequence, Sendable {
    public typealias Element = ClientEvent
    public typealias Failure = Never

    let queue: EventQueue

    public func makeAsyncIterator() -> Iterator { Iterator(queue: queue) }

    /// Iterates ``ClientEvents``.
    public struct Iterator: AsyncIteratorProtocol {
        let queue: EventQueue

        /// The next event; nil once the client is closed and every event was returned, or when the task is
        /// cancelled while it waits.
        public mutating func next() async -> ClientEvent? { await queue.next() }
    }
}

/// The queue behind ``ClientEvents``: unbounded (a client reads what the node sends it; the node bounds what
/// it sends a connection), with one waiting consumer at most.
final class EventQueue: Sendable {
    private struct State {
        var buffer = CircularBuffer<ClientEvent>()
        var waiter: UnsafeContinuation<ClientEvent?, Never>?
        var finished = false
    }

    private let state = Mutex(State())

    /// Adds `event`, or hands it to the waiting consumer. Ignored once finished.
    func yield(_ event: ClientEvent) {
        let waiter = state.withLock { state -> UnsafeContinuation<ClientEvent?, Never>? in
            guard !state.finished else { return nil }
            if let waiter = state.waiter.take() { return waiter }
            state.buffer.append(event)
            return nil
        }
        waiter?.resume(returning: event)
    }

    /// No events follow: the consumer gets the buffered ones, then nil.
    func finish() {
        let waiter = state.withLock { state in
            state.finished = true
            return state.waiter.take()
        }
        waiter?.resume(returning: nil)
    }

    func next() async -> ClientEvent? {
        // Without suspending when an event is buffered (or the queue is finished).
        if let taken = state.withLock({ Self.take(from: &$0, cancelled: false) }) { return taken }
        return await withTaskCancellationHandler {
            await withUnsafeContinuation { continuation in
                let taken = state.withLock { state -> ClientEvent?? in
                    if let taken = Self.take(from: &state, cancelled: Task.isCancelled) { return taken }
                    precondition(state.waiter == nil, "two tasks iterate a client's events at once")
                    state.waiter = continuation
                    return nil
                }
                if let taken { continuation.resume(returning: taken) }
            }
        } onCancel: {
            state.withLock { $0.waiter.take() }?.resume(returning: nil)
        }
    }

    /// What `next()` returns without waiting: the first buffered event, or nil (the end) once the queue is
    /// finished or the consumer cancelled; `.none` when it must wait.
    private static func take(from state: inout State, cancelled: Bool) -> ClientEvent?? {
        if let event = state.buffer.popFirst() { return .some(event) }
        return state.finished || cancelled ? .some(nil) : .none
    }
}
