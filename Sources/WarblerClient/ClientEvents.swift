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
            guard let waiter = state.waiter else {
                state.buffer.append(event)
                return nil
            }
            state.waiter = nil
            return waiter
        }
        waiter?.resume(returning: event)
    }

    /// No events follow: the consumer gets the buffered ones, then nil.
    func finish() {
        let waiter = state.withLock { state -> UnsafeContinuation<ClientEvent?, Never>? in
            state.finished = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: nil)
    }

    func next() async -> ClientEvent? {
        enum Taken {
            case event(ClientEvent?)
            case none
        }
        // Without suspending when an event is buffered (or the queue is finished).
        let taken = state.withLock { state -> Taken in
            if let event = state.buffer.popFirst() { return .event(event) }
            return state.finished ? .event(nil) : .none
        }
        if case .event(let event) = taken { return event }
        return await withTaskCancellationHandler {
            await withUnsafeContinuation { continuation in
                let taken = state.withLock { state -> Taken in
                    if let event = state.buffer.popFirst() { return .event(event) }
                    if state.finished || Task.isCancelled { return .event(nil) }
                    precondition(state.waiter == nil, "two tasks iterate a client's events at once")
                    state.waiter = continuation
                    return .none
                }
                if case .event(let event) = taken { continuation.resume(returning: event) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> UnsafeContinuation<ClientEvent?, Never>? in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume(returning: nil)
        }
    }
}
