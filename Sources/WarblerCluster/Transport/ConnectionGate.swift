import Foundation
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// Lets a warning through at most once every `interval`, so that a flood does not write one per connection.
public final class ReportThrottle: Sendable {
    private let interval: UInt64
    private let lastReport = Atomic<UInt64>(0)

    /// A throttle that lets one report through per `interval`.
    public init(every interval: TimeAmount = .seconds(10)) {
        self.interval = UInt64(interval.nanoseconds)
    }

    /// True when the last `true` was at least the interval ago (or never).
    public func shouldReport() -> Bool {
        let now = NIODeadline.now().uptimeNanoseconds
        let last = lastReport.load(ordering: .relaxed)
        guard last == 0 || now - last >= interval else { return false }
        return lastReport.compareExchange(expected: last, desired: now, ordering: .relaxed).exchanged
    }
}

/// Counts a listener family's open connections and decides, as each is accepted, whether it may stay.
///
/// Up to `capacity` connections are admitted. The next ``refusalAllowance`` are kept just long enough to be
/// told why they cannot stay (a client connection's first frame is answered with the fatal
/// `node.connection_limit`); beyond those, a connection is closed as soon as it is accepted. Every accepted
/// connection holds its place until its channel closes. Turning connections away is logged as a warning, at
/// most every 10 seconds, with the count so far.
public final class ConnectionGate: Sendable {
    /// What happens to an accepted connection.
    public enum Admission: Sendable, Hashable {
        /// It is served.
        case admitted
        /// It is told that the node is full, then closed.
        case refused
        /// It is closed at once.
        case dropped
    }

    /// Connections beyond the capacity that are answered before being closed.
    public static let refusalAllowance = 64
    /// How long a refused connection may stay open waiting for its first frame (a WebSocket client's comes after
    /// its HTTP upgrade; a loaded node or client may take seconds). At most ``refusalAllowance`` wait at once.
    public static let refusalGrace = TimeAmount.seconds(10)

    /// Fails a child channel's initialisation when the gate drops it (the listener then closes it).
    public struct Full: Error, Sendable {
        public init() {}
    }

    /// Connections admitted at most.
    public let capacity: Int
    private let open = Atomic<Int>(0)
    private let turnedAway = Atomic<Int>(0)
    private let reports = ReportThrottle()
    private let logger: Logger
    private let warning: Logger.Message

    /// A gate for `capacity` connections; `warning` is what the log says when it turns connections away.
    public init(capacity: Int, logger: Logger, warning: Logger.Message) {
        self.capacity = capacity
        self.logger = logger
        self.warning = warning
    }

    /// Takes a place for `channel`, given back when it closes, and says what to do with it.
    public func admit(_ channel: any Channel) -> Admission {
        let now = open.add(1, ordering: .relaxed).newValue
        channel.closeFuture.whenComplete { _ in self.open.subtract(1, ordering: .relaxed) }
        if now <= capacity { return .admitted }
        let total = turnedAway.add(1, ordering: .relaxed).newValue
        if reports.shouldReport() {
            logger.warning(
                warning,
                metadata: ["connections.max": "\(capacity)", "connections.turned_away": "\(total)"]
            )
        }
        return now <= capacity + Self.refusalAllowance ? .refused : .dropped
    }
}

extension ServerBootstrap {
    /// Keeps a listener from spinning when the process runs out of file descriptors (``OutOfFilesHandler``).
    public func sheddingConnectionsWhenOutOfFiles(logger: Logger, listener: String) -> ServerBootstrap {
        serverChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(OutOfFilesHandler(logger: logger, listener: listener))
            }
        }
    }
}

/// What a listener does when an accept fails for want of a file descriptor (`EMFILE`, `ENFILE`) or of memory.
///
/// The connection stays in the listen backlog, so the listening socket is readable again at once; SwiftNIO then
/// retries the accept in a loop that keeps a core busy for as long as the shortage lasts (its
/// `AcceptBackoffHandler` does not stop that: the failed accept leaves the channel's read pending). This handler
/// keeps one spare descriptor open; on such a failure it closes the spare, accepts and closes every connection
/// waiting in the backlog, and opens the spare again. The connections waiting are lost — there is no descriptor
/// to serve them with — but the node stays responsive, and a warning says so (at most every 10 seconds).
final class OutOfFilesHandler: ChannelInboundHandler {
    typealias InboundIn = Any

    private let logger: Logger
    private let listener: String
    private var spare: Int32 = -1
    private var listening: Int32 = -1
    private var shedSinceReport = 0
    private let reports = ReportThrottle()

    init(logger: Logger, listener: String) {
        self.logger = logger
        self.listener = listener
    }

    func channelActive(context: ChannelHandlerContext) {
        listening = Self.listeningDescriptor(port: context.channel.localAddress?.port)
        spare = open("/dev/null", O_RDONLY | O_CLOEXEC)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        // The listening descriptor is the channel's, closed with it: its number may be reused from now on.
        listening = -1
        if spare >= 0 { close(spare) }
        spare = -1
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let error = error as? IOError, [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(error.errnoCode) else {
            context.fireErrorCaught(error)
            return
        }
        shed(because: error)
    }

    private func shed(because error: IOError) {
        guard listening >= 0 else { return }
        if spare >= 0 { close(spare) }
        var shed = 0
        while shed < 4096 {
            // The listening socket is non-blocking (NIO made it so): an empty backlog ends the loop.
            let accepted = accept(listening, nil, nil)
            guard accepted >= 0 else { break }
            close(accepted)
            shed += 1
        }
        spare = open("/dev/null", O_RDONLY | O_CLOEXEC)
        shedSinceReport += shed
        guard reports.shouldReport() else { return }
        logger.warning(
            "out of file descriptors: closed the connections waiting to be accepted",
            metadata: ["listener": "\(listener)", "connections.closed": "\(shedSinceReport)", "error": "\(error)"]
        )
        shedSinceReport = 0
    }

    /// The descriptor of this process's socket listening on `port` (NIO does not expose its channels'
    /// descriptors), or -1.
    private static func listeningDescriptor(port: Int?) -> Int32 {
        guard let port, let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else {
            return -1
        }
        for entry in entries {
            guard let descriptor = Int32(entry) else { continue }
            var accepting: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(descriptor, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &length) == 0, accepting == 1 else {
                continue
            }
            var address = sockaddr_storage()
            var addressLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let named = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &addressLength) }
            }
            guard named == 0 else { continue }
            let family = Int32(address.ss_family)
            guard family == AF_INET || family == AF_INET6 else { continue }
            // The port follows the family in both sockaddr_in and sockaddr_in6.
            let boundPort = withUnsafeBytes(of: &address) {
                UInt16(bigEndian: $0.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
            }
            if Int(boundPort) == port { return descriptor }
        }
        return -1
    }
}
