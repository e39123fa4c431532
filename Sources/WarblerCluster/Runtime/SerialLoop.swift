import Foundation
import NIOCore
import NIOPosix
import WarblerStorage

/// A serial queue with a thread of its own (a SwiftNIO event loop): the Raft scheduler and the apply queue run
/// on one each. Work handed to an idle loop wakes that one thread, and a timer is the loop's own `epoll`
/// deadline; a `DispatchQueue` ran on whichever of libdispatch's pool threads was free (four or five took
/// turns) and sent every timer through its manager thread (docs/performance.md has the before and after).
final class SerialLoop: @unchecked Sendable {
    private let group: MultiThreadedEventLoopGroup
    /// The loop everything runs on.
    let loop: any EventLoop

    /// Starts the loop's thread, named `name` (at most 15 bytes show in `top -H` and `perf`).
    init(name: String) {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        loop = group.next()
        loop.execute {
            Thread.current.name = name
            // The loops do most of the node's RocksDB writes; its per-thread counters cost 4-5% (performance.md).
            Database.disablePerformanceCountersOnThisThread()
        }
    }

    deinit {
        group.shutdownGracefully { _ in }
    }

    /// Runs `body` on the loop, after everything it was given before.
    func async(execute body: @escaping @Sendable () -> Void) {
        loop.execute(body)
    }

    /// Runs `body` on the loop once `delay` has passed.
    func after(_ delay: Duration, execute body: @escaping @Sendable () -> Void) {
        loop.scheduleTask(in: TimeAmount(delay), body)
    }

    /// Runs `body` on the loop every `interval`, the first time one interval from now, until the returned task
    /// is cancelled.
    func repeating(every interval: Duration, _ body: @escaping @Sendable () -> Void) -> RepeatedTask {
        loop.scheduleRepeatedTask(initialDelay: TimeAmount(interval), delay: TimeAmount(interval)) { _ in body() }
    }

    /// Runs `body` on the loop and returns its result once it ran (on the loop itself, runs it at once).
    func sync<T: Sendable>(execute body: @escaping @Sendable () -> T) -> T {
        if loop.inEventLoop { return body() }
        // `submit` cannot fail on a running loop, and these loops run until the host is gone.
        return try! loop.submit(body).wait()
    }
}
