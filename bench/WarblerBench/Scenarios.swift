import Foundation
import NIOCore
import NIOPosix
import Synchronization
import WarblerClient
import WarblerWire

/// The nodes a run talks to.
struct Fleet: Sendable {
    var targets: [Target]
    var password: String
    /// The event loops every client connection of the run shares (one thread per core, like a real application
    /// with many connections; a thread per connection would measure the bench's context switches).
    var eventLoops: any EventLoopGroup
    /// Who leads each group now, when the bench knows the cluster (`--spawn cluster:N`); nil otherwise.
    var leadership: (@Sendable () throws -> Leadership)?

    struct Target: Sendable {
        var host: String
        var port: Int
    }

    /// A logged-in connection of `user` to node `index % targets.count`.
    func connect(_ user: String, node index: Int) async throws -> WarblerClient {
        let target = targets[index % targets.count]
        var configuration = WarblerClient.Configuration(host: target.host, port: target.port)
        configuration.eventLoopGroup = eventLoops
        let client = WarblerClient(configuration: configuration)
        try await client.connect()
        do { try await client.login(user: user, password: password) } catch {
            await client.close()
            throw BenchFailure("cannot log in as \(user) on \(target.host):\(target.port): \(error)")
        }
        return client
    }

    /// The id (from 1) of the node `client` is connected to (0 if none of the targets).
    func node(of client: WarblerClient) -> Int {
        let (host, port) = (client.configuration.host, client.configuration.port)
        return (targets.firstIndex { $0.host == host && $0.port == port } ?? -1) + 1
    }

    /// Reconnects `client` (logged in as `user`) to the node with id `node` (from 1), unless it is connected there.
    func move(_ client: inout WarblerClient, as user: String, to node: Int) async throws {
        guard self.node(of: client) != node else { return }
        await client.close()
        client = try await connect(user, node: node - 1)
    }

    /// Where each of `conversations` should have its clients, from who leads its partition now; nil when the
    /// bench does not know the leaders (a single node, or `--target`).
    func placements(of conversations: [String]) throws -> [Placement]? {
        guard targets.count > 1, let leadership = try leadership?() else { return nil }
        return try conversations.map { conversation in
            guard let placement = Placement(of: conversation, leadership: leadership, nodes: targets.count) else {
                throw BenchFailure("the partition of conversation \(conversation) has no leader")
            }
            return placement
        }
    }

    /// Connects every `(user, node)` with at most `concurrency` logins in flight (logins hash a password). Four:
    /// a node takes at most a quarter of its waiting password checks (4 of 17 on two cores) from one address, and
    /// every bench connection comes from 127.0.0.1 — with more in flight the node refuses some as busy, and a
    /// refused login that retries can lose each freed place to a fresh one for the SDK's 30 s.
    func connectAll(_ users: [(user: String, node: Int)], concurrency: Int = 4) async throws -> [WarblerClient] {
        var clients = [WarblerClient?](repeating: nil, count: users.count)
        try await withThrowingTaskGroup(of: (Int, WarblerClient).self) { group in
            var next = 0
            func start() {
                guard next < users.count else { return }
                let index = next
                next += 1
                group.addTask { (index, try await connect(users[index].user, node: users[index].node)) }
            }
            for _ in 0..<concurrency { start() }
            while let (index, client) = try await group.next() {
                clients[index] = client
                start()
            }
        }
        return clients.map { $0! }
    }
}

struct BenchFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// The node ids (from 1) a conversation's clients go to on a cluster whose leaders the bench knows: its sender on
/// the node after the leader of its partition, its recipient on the one after that (on the leader's own node when
/// there are two nodes). Every send is then forwarded and every delivery leaves a follower.
struct Placement {
    var sender: Int
    var leader: Int
    var recipient: Int

    /// Nil when the conversation's partition has no leader among the `nodes`.
    init?(of conversation: String, leadership: Leadership, nodes: Int) {
        guard let leader = leadership.leader(of: conversation), (1...nodes).contains(leader) else { return nil }
        self.leader = leader
        sender = leader % nodes + 1
        recipient = nodes > 2 ? sender % nodes + 1 : leader
    }
}

/// Counts `client`'s pushes of messages sent by others as deliveries, until cancelled.
func receive(_ client: WarblerClient, as user: String, counters: RunCounters) -> Task<Void, Never> {
    Task(executorPreference: client.executor) {
        var last: (conversation: String, waiting: WaitingRecipients?) = ("", nil)
        for await event in client.events {
            guard case .message(let message) = event, message.sender != user,
                let stamp = StampedPayload.stamp(of: message.payload)
            else { continue }
            counters.totalDeliveries.add(1, ordering: .relaxed)
            if message.conversationID != last.conversation {
                last = (message.conversationID, counters.recipients(of: message.conversationID))
            }
            counters.delivered(seq: message.seq, in: last.waiting, sent: stamp, received: monotonicNanoseconds())
        }
    }
}

/// What a scenario reports beyond the shared counters.
struct ScenarioExtras: Codable, Sendable {
    var connections: Int?
    var connectsPerSecond: Double?
    var serverBytesPerConnection: Double?
    var backlog: Int?
    var syncSeconds: Double?
    var syncedPerSecond: Double?
    /// `--verify`: acknowledged messages found on every node.
    var verifiedMessages: Int?
    /// `--spawn cluster:N`: how many groups each node led when the measurement started, by node id from 1.
    var groupsLed: [Int]?
    /// `pairs` on a spawned cluster: each pair's `[sender's node, leader of its partition, recipient's node]`, as
    /// connected.
    var pairNodes: [[Int]]?
    /// `group` on a spawned cluster: each group's `[its first sender's node, leader of its partition]`, as
    /// connected.
    var groupNodes: [[Int]]?
    /// `--login-flood`: what the flood of wrong logins saw.
    var loginFlood: LoginFlood.Summary?
    /// `restart`: how the clients came back after the node was killed and started again.
    var restart: RestartScenario.Summary?

    enum CodingKeys: String, CodingKey {
        case connections
        case connectsPerSecond = "connects_per_second"
        case serverBytesPerConnection = "server_bytes_per_connection"
        case backlog
        case syncSeconds = "sync_seconds"
        case syncedPerSecond = "synced_per_second"
        case verifiedMessages = "verified_messages"
        case groupsLed = "groups_led"
        case pairNodes = "pair_nodes"
        case groupNodes = "group_nodes"
        case loginFlood = "login_flood"
        case restart
    }
}

/// Runs a measured load over prepared senders and recipients (the measured window opens `warmUp` seconds
/// from now), then stops receiving and closes everything. `recipients`: how many of `clients` receive each
/// message of a conversation (for the latency until all of them have it).
func measure(
    senders: [Sender],
    clients: [(client: WarblerClient, user: String)],
    recipients: [String: Int],
    shape: LoadShape,
    payloadBytes: Int,
    window: (warmUp: Double, seconds: Double),
    onStart: (RunCounters) -> Void,
    progress: Bool,
    verify: AcknowledgedMessages? = nil
) async -> RunCounters {
    let counters = RunCounters(warmUpSeconds: window.warmUp, seconds: window.seconds, recipients: recipients)
    onStart(counters)
    let receivers = clients.map { receive($0.client, as: $0.user, counters: counters) }
    let printer = progress ? reportProgress(counters) : nil
    await drive(senders, shape: shape, payloadBytes: payloadBytes, counters: counters, verify: verify)
    // Deliveries of the last sends are still on their way.
    try? await Task.sleep(nanoseconds: 500_000_000)
    printer?.cancel()
    for receiver in receivers { receiver.cancel() }
    for (client, _) in clients { await client.close() }
    return counters
}

// MARK: - pairs

/// P direct conversations, one sender each; each pair's recipient is online on its own connection (on another
/// node than its sender when there are several).
///
/// When the bench knows who leads each partition (a spawned cluster), every pair is placed so that its sender's
/// node, its conversation's leader and its recipient's node are three different nodes (with two nodes: the sender
/// is not on the leader's node): every send is forwarded to the leader and every delivery leaves a follower — the
/// general case of a larger cluster, and the same path in every run. Spread round-robin instead, a run measured
/// whichever path the leader of its partition happened to give: with one sender, 31,478 msgs/s when the sender's
/// node led it and 24,000 when the recipient's did, on the same build (docs/performance.md).
enum PairsScenario {
    static func users(pairs: Int) -> [String] { (0..<pairs).flatMap { ["bench-s\($0)", "bench-r\($0)"] } }

    static func prepareAndRun(
        fleet: Fleet,
        pairs: Int,
        shape: LoadShape,
        payloadBytes: Int,
        warmUp: Double,
        seconds: Double,
        progress: Bool,
        verify: AcknowledgedMessages?,
        placed: ([[Int]]) -> Void,
        onStart: (RunCounters) -> Void
    ) async throws -> RunCounters {
        let users = (0..<pairs).flatMap { [("bench-s\($0)", $0), ("bench-r\($0)", $0 + 1)] }
        var clients = try await fleet.connectAll(users)
        var conversations: [String] = []
        for index in 0..<pairs {
            conversations.append(try await clients[2 * index].createDirect(with: "bench-r\(index)").conversationID)
            verify?.reader(of: conversations[index], is: "bench-r\(index)")
        }
        if let placements = try fleet.placements(of: conversations) {
            for (index, placement) in placements.enumerated() {
                try await fleet.move(&clients[2 * index], as: users[2 * index].0, to: placement.sender)
                try await fleet.move(&clients[2 * index + 1], as: users[2 * index + 1].0, to: placement.recipient)
            }
            placed(
                placements.indices.map {
                    [fleet.node(of: clients[2 * $0]), placements[$0].leader, fleet.node(of: clients[2 * $0 + 1])]
                }
            )
        }
        let senders = (0..<pairs).map { Sender(client: clients[2 * $0], conversation: conversations[$0]) }
        return await measure(
            senders: senders,
            clients: Array(zip(clients, users.map(\.0))),
            recipients: Dictionary(uniqueKeysWithValues: conversations.map { ($0, 1) }),
            shape: shape,
            payloadBytes: payloadBytes,
            window: (warmUp, seconds),
            onStart: onStart,
            progress: progress,
            verify: verify
        )
    }
}

// MARK: - group

/// G groups of M members; the first S members of each group send, every member is online on its own
/// connection and receives the others' messages. On a spawned cluster a group's senders are on a node that does
/// not lead its partition (the node after the leader's), as in `pairs`; its other members stay spread over every
/// node.
enum GroupScenario {
    static func member(_ group: Int, _ member: Int) -> String { "bench-g\(group)-m\(member)" }
    static func users(groups: Int, members: Int) -> [String] {
        (0..<groups).flatMap { group in (0..<members).map { member(group, $0) } }
    }

    static func prepareAndRun(
        fleet: Fleet,
        groups: Int,
        members: Int,
        sendersPerGroup: Int,
        shape: LoadShape,
        payloadBytes: Int,
        warmUp: Double,
        seconds: Double,
        progress: Bool,
        placed: ([[Int]]) -> Void,
        onStart: (RunCounters) -> Void
    ) async throws -> RunCounters {
        guard members >= 2, (1...members).contains(sendersPerGroup) else {
            throw BenchFailure("a group needs at least 2 members and 1…members senders")
        }
        var users: [(String, Int)] = []
        for group in 0..<groups {
            for index in 0..<members { users.append((member(group, index), group * members + index)) }
        }
        var clients = try await fleet.connectAll(users)
        var conversations: [String] = []
        for group in 0..<groups {
            let creator = clients[group * members]
            let conversation = try await creator.createGroup(
                title: "bench group \(group)",
                members: (1..<members).map { member(group, $0) }
            )
            conversations.append(conversation.conversationID)
        }
        if let placements = try fleet.placements(of: conversations) {
            for (group, placement) in placements.enumerated() {
                for slot in group * members..<group * members + sendersPerGroup {
                    try await fleet.move(&clients[slot], as: users[slot].0, to: placement.sender)
                }
            }
            placed(placements.indices.map { [fleet.node(of: clients[$0 * members]), placements[$0].leader] })
        }
        var senders: [Sender] = []
        for (group, conversation) in conversations.enumerated() {
            for index in 0..<sendersPerGroup {
                senders.append(Sender(client: clients[group * members + index], conversation: conversation))
            }
        }
        return await measure(
            senders: senders,
            clients: Array(zip(clients, users.map(\.0))),
            // Every other member, senders included, on a connection of its own.
            recipients: Dictionary(uniqueKeysWithValues: conversations.map { ($0, members - 1) }),
            shape: shape,
            payloadBytes: payloadBytes,
            window: (warmUp, seconds),
            onStart: onStart,
            progress: progress
        )
    }
}

// MARK: - sync

/// A member comes back to a backlog: N messages are sent while the recipient is away, then it connects and
/// syncs; the figure is how fast the backlog arrives.
enum SyncScenario {
    static let users = ["bench-s0", "bench-r0"]

    static func run(
        fleet: Fleet,
        backlog: Int,
        window: Int,
        payloadBytes: Int,
        counters: RunCounters
    ) async throws -> ScenarioExtras {
        let sender = try await fleet.connect("bench-s0", node: 0)
        let conversation = try await sender.createDirect(with: "bench-r0").conversationID
        let next = InFlight()
        let started = monotonicNanoseconds()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<max(window, 1) {
                group.addTask {
                    while next.count.add(1, ordering: .relaxed).oldValue < backlog {
                        let sent = monotonicNanoseconds()
                        let payload = StampedPayload.make(size: payloadBytes, stamp: sent)
                        _ = try await sender.send(payload, to: conversation)
                        counters.sends.add(1, ordering: .relaxed)
                        counters.acks.add(1, ordering: .relaxed)
                        counters.ack.record(nanoseconds: monotonicNanoseconds() - sent)
                    }
                }
            }
            try await group.waitForAll()
        }
        let sendSeconds = Double(monotonicNanoseconds() - started) / 1e9
        await sender.close()
        FileHandle.standardError.write(
            Data("backlog of \(backlog) sent in \(String(format: "%.2f", sendSeconds)) s\n".utf8)
        )

        let recipient = try await fleet.connect("bench-r0", node: 1)
        let syncStart = monotonicNanoseconds()
        let synced = try await recipient.sync()
        let syncSeconds = Double(monotonicNanoseconds() - syncStart) / 1e9
        await recipient.close()
        guard synced == backlog else { throw BenchFailure("the recipient synced \(synced) of \(backlog) messages") }
        counters.deliveries.add(synced, ordering: .relaxed)
        return ScenarioExtras(backlog: backlog, syncSeconds: syncSeconds, syncedPerSecond: Double(synced) / syncSeconds)
    }
}

// MARK: - mixed

/// A chat-like mix over U users (one connection each): direct conversations and groups of 3–12, chosen by
/// Zipf popularity; each operation is a send (85%), a read receipt (10%) or a history read (5%) by a random
/// member. Everything is drawn from `--seed`.
enum MixedScenario {
    static func users(count: Int) -> [String] { (0..<count).map { "bench-u\($0)" } }

    struct Conversation: Sendable {
        var id: String
        var members: [Int]
    }

    static func prepareAndRun(
        fleet: Fleet,
        userCount: Int,
        shape: LoadShape,
        payloadBytes: Int,
        seed: UInt64,
        warmUp: Double,
        seconds: Double,
        progress: Bool,
        onStart: (RunCounters) -> Void
    ) async throws -> RunCounters {
        guard userCount >= 3 else { throw BenchFailure("mixed needs at least 3 users") }
        let names = users(count: userCount)
        let clients = try await fleet.connectAll(names.enumerated().map { ($1, $0) })
        var generator = SeededGenerator(seed: seed)
        var conversations: [Conversation] = []
        var directs = Set<[Int]>()
        for _ in 0..<userCount {
            let a = Int.random(in: 0..<userCount, using: &generator)
            var b = Int.random(in: 0..<userCount - 1, using: &generator)
            if b >= a { b += 1 }
            guard directs.insert([min(a, b), max(a, b)]).inserted else { continue }
            let id = try await clients[a].createDirect(with: names[b]).conversationID
            conversations.append(Conversation(id: id, members: [a, b]))
        }
        for group in 0..<max(1, userCount / 4) {
            let size = Int.random(in: 3...min(12, userCount), using: &generator)
            let members = Array((0..<userCount).shuffled(using: &generator).prefix(size))
            let id = try await clients[members[0]].createGroup(
                title: "mixed \(group)",
                members: members.dropFirst().map { names[$0] }
            ).conversationID
            conversations.append(Conversation(id: id, members: members))
        }
        conversations.shuffle(using: &generator)
        let zipf = Zipf(count: conversations.count, exponent: 1.1)
        let counters = RunCounters(
            warmUpSeconds: warmUp,
            seconds: seconds,
            recipients: Dictionary(uniqueKeysWithValues: conversations.map { ($0.id, $0.members.count - 1) })
        )
        onStart(counters)
        let receivers = zip(clients, names).map { receive($0, as: $1, counters: counters) }
        let printer = progress ? reportProgress(counters) : nil
        let conversationList = conversations
        let operation: @Sendable (inout SeededGenerator, UInt64) async -> Void = { generator, intended in
            let conversation = conversationList[zipf.next(using: &generator)]
            let member = conversation.members.randomElement(using: &generator)!
            let client = clients[member]
            let draw = Int.random(in: 0..<100, using: &generator)
            do {
                if draw < 85 {
                    await send(
                        Sender(client: client, conversation: conversation.id),
                        intended: intended,
                        bytes: payloadBytes,
                        counters
                    )
                } else if draw < 95 {
                    // A receipt only when the member has seen something of the conversation (else nothing is sent).
                    let seq = client.lastSeenSeq[conversation.id] ?? 0
                    if seq > 0 {
                        try await client.markRead(conversation.id, upTo: seq)
                        if counters.measured(intended) { counters.receipts.add(1, ordering: .relaxed) }
                    }
                } else {
                    _ = try await client.history(of: conversation.id, limit: 50)
                    if counters.measured(intended) {
                        counters.reads.add(1, ordering: .relaxed)
                        counters.read.record(nanoseconds: monotonicNanoseconds() - intended)
                    }
                }
            } catch {
                counters.failed(error)
            }
        }
        switch shape {
        case .closed(let window):
            await withDiscardingTaskGroup { group in
                for worker in 0..<(userCount * window) {
                    let forked = generator.fork(worker)
                    group.addTask {
                        var local = forked
                        while !counters.finished { await operation(&local, monotonicNanoseconds()) }
                    }
                }
            }
        case .open(let rate):
            let interval = 1e9 / rate
            var next = Double(monotonicNanoseconds())
            var worker = 0
            await withDiscardingTaskGroup { group in
                while !counters.finished {
                    let now = Double(monotonicNanoseconds())
                    while next <= now {
                        let forked = generator.fork(worker)
                        worker += 1
                        let intended = UInt64(next)
                        next += interval
                        group.addTask {
                            var local = forked
                            await operation(&local, intended)
                        }
                    }
                    // The same grid as the other open loops (this pacer is no connection's, so it resumes by a hop).
                    await pause(
                        nanoseconds: Int64(max(next - Double(monotonicNanoseconds()), 0)),
                        on: clients[0].eventLoop
                    )
                }
            }
        }
        try? await Task.sleep(nanoseconds: 500_000_000)
        printer?.cancel()
        for receiver in receivers { receiver.cancel() }
        for client in clients { await client.close() }
        return counters
    }
}
