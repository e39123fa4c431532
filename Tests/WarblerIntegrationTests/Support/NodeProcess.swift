import Foundation
import NIOCore
import Synchronization
import WarblerClient
import WarblerWire

#if canImport(Glibc)
import Glibc
#endif

/// A real `warbler` process on loopback with its own temporary data directory.
final class NodeProcess: @unchecked Sendable {
    static let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let binary = packageRoot.appendingPathComponent(".build/debug/warbler").path

    let dataDirectory: String
    let port: Int
    let webSocketPort: Int
    let peerPort: Int
    let nodeID: UInt64
    private var process: Process?
    let logPath: String
    static let logSequence = Atomic<Int>(0)

    init(nodeID: UInt64 = 1) throws {
        self.nodeID = nodeID
        dataDirectory = NSTemporaryDirectory() + "warbler-it-\(UUID().uuidString)"
        logPath = dataDirectory + ".log"
        var ports = Set<Int>()
        while ports.count < 3 { ports.insert(try Self.freePort()) }
        let sorted = ports.shuffled()
        port = sorted[0]
        webSocketPort = sorted[1]
        peerPort = sorted[2]
    }

    /// The network namespace the node runs in (`ip netns exec`), if any.
    var namespace: String?
    /// Where clients and peers reach the node (loopback unless it runs in a namespace).
    var clientHost = "127.0.0.1"
    var peerHost = "127.0.0.1"

    var peerAddress: String { "\(peerHost):\(peerPort)" }
    /// Where `warbler cluster status` asks (inside the node's namespace: its loopback, reachable even when the
    /// node is cut off).
    var statusAddress: String { namespace == nil ? peerAddress : "127.0.0.1:\(peerPort)" }

    /// Runs the `warbler` CLI and returns what it printed; throws when it fails.
    @discardableResult
    static func cli(_ arguments: [String], namespace: String? = nil) async throws -> String {
        let command = namespace.map { ["/usr/sbin/ip", "netns", "exec", $0, binary] } ?? [binary]
        let finished = try await ChildProcess.run(command[0], Array(command.dropFirst()) + arguments)
        let text = finished.outputText + finished.errorText
        guard finished.status == 0 else {
            throw TestFailure("warbler \(arguments.joined(separator: " ")): \(text)")
        }
        return finished.outputText
    }

    /// Issues this node's certificate from the CA of the cluster's first node.
    func issueCertificate(caDirectory: String) async throws {
        try await Self.cli([
            "cert", "issue", "--node", "\(nodeID)", "--ca", caDirectory, "--out", dataDirectory + "/certs",
        ])
    }

    /// `warbler cluster status --json` as this node answers it.
    func clusterStatus() async throws -> Warbler_Peer_V1_ClusterStatus {
        // From inside the node's namespace, so that the answer comes even when the node is cut off.
        let json = try await Self.cli(
            ["cluster", "status", "--json", "--peer", statusAddress, "--certs", dataDirectory + "/certs"],
            namespace: namespace
        )
        return try Warbler_Peer_V1_ClusterStatus(jsonString: json)
    }

    deinit {
        if let process, process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: dataDirectory)
        // WARBLER_KEEP_LOGS=DIR keeps every node's log there (for a failure that is hard to reproduce).
        if let keep = ProcessInfo.processInfo.environment["WARBLER_KEEP_LOGS"] {
            try? FileManager.default.createDirectory(atPath: keep, withIntermediateDirectories: true)
            let name = "\(keep)/\(Self.logSequence.add(1, ordering: .relaxed).oldValue)-node\(nodeID).log"
            try? FileManager.default.moveItem(atPath: logPath, toPath: name)
        }
        try? FileManager.default.removeItem(atPath: logPath)
    }

    /// Runs `warbler user add` against the (stopped) node's data.
    func addUser(_ name: String, password: String, role: String = "member") async throws {
        let finished = try await ChildProcess.run(
            Self.binary,
            ["user", "add", name, "--role", role, "--data", dataDirectory],
            input: Data((password + "\n").utf8)
        )
        guard finished.status == 0 else {
            throw TestFailure("user add \(name) failed: \(finished.outputText)\(finished.errorText)")
        }
    }

    /// Extra `serve` arguments (tuning for a test).
    var serveArguments: [String] = []
    /// A command `serve` runs under (for example `prlimit --nofile=512:1024`); not with a namespace.
    var launcher: [String] = []

    /// Starts `warbler serve` and waits until it accepts connections.
    func start(join: String? = nil, region: String = "") async throws {
        let process = Process()
        let command = namespace.map { ["/usr/sbin/ip", "netns", "exec", $0, Self.binary] } ?? launcher + [Self.binary]
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments =
            Array(command.dropFirst()) + [
                "serve", "--data", dataDirectory, "--port", "\(port)", "--websocket-port", "\(webSocketPort)",
                "--peer-port", "\(peerPort)", "--node-id", "\(nodeID)", "--log-level",
                ProcessInfo.processInfo.environment["WARBLER_IT_LOG_LEVEL"] ?? "notice",
            ] + (join.map { ["--join", $0] } ?? []) + (region.isEmpty ? [] : ["--region", region]) + serveArguments
        if !FileManager.default.fileExists(atPath: logPath) {
            _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        }
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        log.seekToEndOfFile()
        process.standardOutput = log
        process.standardError = log
        try process.run()
        self.process = process
        for _ in 0..<400 {
            if Self.canConnect(host: clientHost, port: port) && Self.canConnect(host: clientHost, port: webSocketPort) {
                return
            }
            guard process.isRunning else { throw TestFailure("warbler serve exited: \(self.log)") }
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        throw TestFailure("warbler serve did not start listening: \(self.log)")
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// kill -9: no shutdown of any kind.
    func kill9() {
        guard let process else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        self.process = nil
    }

    /// SIGSTOP: the process freezes with its sockets open (a hung node).
    func pause() {
        guard let process else { return }
        kill(process.processIdentifier, SIGSTOP)
    }

    /// SIGCONT after ``pause()``.
    func resume() {
        guard let process else { return }
        kill(process.processIdentifier, SIGCONT)
    }

    /// SIGTERM and wait: a graceful stop.
    func stop() {
        guard let process else { return }
        process.terminate()
        process.waitUntilExit()
        self.process = nil
    }

    var isRunning: Bool { process?.isRunning ?? false }

    /// The running process's id.
    var processID: Int32? { process?.processIdentifier }

    /// CPU time the process has used (user and system), in seconds.
    func cpuSeconds() -> Double? {
        guard let pid = processID,
            let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let afterName = stat.lastIndex(of: ")")
        else { return nil }
        // Fields after the name, from the third (state): utime and stime are the 14th and 15th of the line.
        let fields = stat[stat.index(after: afterName)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    func client(reconnect: Bool = true, eventLoopGroup: (any EventLoopGroup)? = nil) -> WarblerClient {
        var configuration = WarblerClient.Configuration(host: clientHost, port: port)
        configuration.reconnect = reconnect
        configuration.eventLoopGroup = eventLoopGroup
        return WarblerClient(configuration: configuration)
    }

    /// A connected, logged-in client with a recorder of its events.
    func login(_ user: String, password: String, reconnect: Bool = true) async throws -> (WarblerClient, EventRecorder)
    {
        let client = client(reconnect: reconnect)
        let recorder = EventRecorder(client)
        try await client.connect()
        try await client.login(user: user, password: password)
        return (client, recorder)
    }

    /// Ports for nodes come from outside the kernel's ephemeral range (`ip_local_port_range`): a port the
    /// kernel hands out for `bind(0)` can be taken, between this check and the node's own bind, by an outgoing
    /// connection of another test running in parallel (seen: "Address already in use"). One range per run,
    /// walked by a counter from a random start, each port checked by binding it.
    static let portRange: Range<Int> = {
        let bounds = ((try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)) ?? "")
            .split(whereSeparator: \.isWhitespace).compactMap { Int($0) }
        let (low, high) = bounds.count == 2 ? (bounds[0], bounds[1]) : (32_768, 60_999)
        // Above the range when there is room there, else below it (and above the bench's spawned nodes).
        return high <= 64_000 ? (high + 1)..<65_536 : 31_000..<low
    }()
    static let nextPort = Atomic<Int>(Int.random(in: 0..<1_000))

    static func freePort() throws -> Int {
        for _ in 0..<portRange.count {
            let offset = nextPort.add(1, ordering: .relaxed).newValue % portRange.count
            let port = portRange.lowerBound + offset
            if canBind(port: port) { return port }
        }
        throw TestFailure("no free port in \(portRange)")
    }

    static func canBind(port: Int) -> Bool {
        let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(socket) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }

    static func canConnect(host: String = "127.0.0.1", port: Int) -> Bool {
        let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(socket) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr(host)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Records every event of a client for the whole test (the stream has one consumer: this recorder).
final class EventRecorder: Sendable {
    private let recorded = Mutex<[ClientEvent]>([])

    init(_ client: WarblerClient) {
        let events = client.events
        Task {
            for await event in events { self.append(event) }
        }
    }

    private func append(_ event: ClientEvent) { recorded.withLock { $0.append(event) } }

    var events: [ClientEvent] { recorded.withLock { $0 } }

    /// Message events so far: (conversation, seq, payload text).
    var messages: [(conversation: String, seq: UInt64, text: String)] {
        events.compactMap {
            if case .message(let message) = $0 {
                return (message.conversationID, message.seq, String(decoding: message.payload, as: UTF8.self))
            }
            return nil
        }
    }

    /// Waits until `condition` holds for the recorded events, or the time is up.
    @discardableResult
    func wait(seconds: Double = 10, until condition: @escaping ([ClientEvent]) -> Bool) async -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition(events) { return true }
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
        return condition(events)
    }

    func waitForMessages(_ count: Int, seconds: Double = 10) async -> Bool {
        await wait(seconds: seconds) { events in
            events.filter { if case .message = $0 { return true } else { return false } }.count >= count
        }
    }
}
