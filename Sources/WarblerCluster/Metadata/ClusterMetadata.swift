import WarblerStorage
import WarblerWire

public typealias NodeInfo = Warbler_Peer_V1_NodeInfo
public typealias ClusterInfo = Warbler_Peer_V1_ClusterInfo
public typealias ClusterCommand = Warbler_Peer_V1_ClusterCommand
public typealias ClusterStatus = Warbler_Peer_V1_ClusterStatus

/// The cluster's own records, replicated by the metadata group (group 0) and kept in the `cluster` column
/// family. Keys (see docs/storage.md):
/// - `0x01` → ``ClusterInfo`` (id, partition count, replication factor)
/// - `0x02 | node u64` → ``NodeInfo``
/// - `0xF0` → this node's identity (`NodeInfo` of itself + cluster id); local, never replicated.
public struct ClusterView: Sendable, Equatable {
    public var info: ClusterInfo?
    public var nodes: [UInt64: NodeInfo] = [:]

    public init(info: ClusterInfo? = nil, nodes: [UInt64: NodeInfo] = [:]) {
        self.info = info
        self.nodes = nodes
    }

    /// Nodes that hold (or should receive) replicas, by id.
    public var activeNodes: [NodeInfo] { nodes.values.filter { $0.state == .active }.sorted { $0.nodeID < $1.nodeID } }

    static let infoKey: [UInt8] = [0x01]
    static let nodeTag: UInt8 = 0x02
    static let identityKey: [UInt8] = [0xF0]
    /// The replicated range: `[0x01, 0x03)`.
    static let replicatedRange: (start: [UInt8], end: [UInt8]) = ([0x01], [0x03])

    static func nodeKey(_ id: UInt64) -> [UInt8] {
        var key = [nodeTag]
        appendBigEndian(id, to: &key)
        return key
    }

    /// Loads the replicated records.
    static func load(from database: Database, family: ColumnFamily) throws(StorageError) -> ClusterView {
        let rows = try database.scan(in: family, from: replicatedRange.start, to: replicatedRange.end)
        return try ClusterView(records: rows.map { StateRecord(key: $0.key, value: $0.value) })
    }

    init(records: [StateRecord]) throws(StorageError) {
        for record in records {
            do {
                if record.key == Self.infoKey {
                    info = try ClusterInfo(serializedBytes: record.value)
                } else if record.key.first == Self.nodeTag {
                    let node = try NodeInfo(serializedBytes: record.value)
                    nodes[node.nodeID] = node
                }
            } catch {
                throw StorageError(.corruption, "cluster record cannot be decoded", cause: "\(error)")
            }
        }
    }

    /// The records a snapshot of the metadata group carries.
    var records: [StateRecord] {
        var records: [StateRecord] = []
        if let info { records.append(StateRecord(key: Self.infoKey, value: try! info.serializedBytes())) }
        for node in nodes.values.sorted(by: { $0.nodeID < $1.nodeID }) {
            records.append(StateRecord(key: Self.nodeKey(node.nodeID), value: try! node.serializedBytes()))
        }
        return records
    }

    /// Applies a committed cluster command, staging its writes; returns an error message when refused.
    mutating func apply(_ command: ClusterCommand, into batch: WriteBatch, family: ColumnFamily) -> String? {
        switch command.body {
        case .init_p(let newInfo):
            guard info == nil else { return "the cluster is already initialised" }
            info = newInfo
            batch.put(Self.infoKey, try! newInfo.serializedBytes(), in: family)
        case .addNode(let join):
            var node = join.node
            guard node.nodeID != 0 else { return "node ids start at 1" }
            if let existing = nodes[node.nodeID] {
                guard existing.state != .removed else { return "node \(node.nodeID) was removed; use a new id" }
                node.state = existing.state
            } else {
                node.state = .active
            }
            nodes[node.nodeID] = node
            batch.put(Self.nodeKey(node.nodeID), try! node.serializedBytes(), in: family)
        case .removeNode(let remove):
            guard var node = nodes[remove.nodeID] else { return "node \(remove.nodeID) is not in the cluster" }
            guard activeNodes.count > 1 || node.state != .active else { return "the last node cannot be removed" }
            node.state = .leaving
            nodes[node.nodeID] = node
            batch.put(Self.nodeKey(node.nodeID), try! node.serializedBytes(), in: family)
        case .setPreferredRegion(let preference):
            guard var updated = info else { return "the cluster is not initialised" }
            for group in preference.groups {
                guard group <= updated.partitionCount else { return "group \(group) does not exist" }
                if preference.region.isEmpty {
                    updated.preferredLeaderRegion.removeValue(forKey: group)
                } else {
                    updated.preferredLeaderRegion[group] = preference.region
                }
            }
            info = updated
            batch.put(Self.infoKey, try! updated.serializedBytes(), in: family)
        case nil:
            return "empty cluster command"
        }
        return nil
    }
}

/// Where replicas go: rendezvous (highest-random-weight) hashing of group × node, spread over regions first.
/// Deterministic, so every node computes the same placement from the same metadata, and adding a node moves
/// only the replicas the new node wins.
public enum Placement {
    /// Voters of the metadata group, at most.
    public static let maxMetadataVoters = 5

    /// The desired replicas of `group`, the preferred leader first. With a `leaderRegion` that has nodes, one
    /// replica is in that region and comes first.
    public static func replicas(
        of group: UInt32,
        among nodes: [NodeInfo],
        count: Int,
        leaderRegion: String = ""
    ) -> [UInt64] {
        let ranked = nodes.sorted { score(group, $0.nodeID) > score(group, $1.nodeID) }
        var chosen: [NodeInfo] = []
        var regions = Set<String>()
        if !leaderRegion.isEmpty, let leader = ranked.first(where: { $0.region == leaderRegion }), count > 0 {
            chosen.append(leader)
            regions.insert(leaderRegion)
        }
        // One per region first, in rank order, then fill by rank.
        for node in ranked where chosen.count < count && !regions.contains(node.region) {
            chosen.append(node)
            regions.insert(node.region)
        }
        for node in ranked where chosen.count < count && !chosen.contains(where: { $0.nodeID == node.nodeID }) {
            chosen.append(node)
        }
        // Keep the rank order so that the first is the best-ranked (the preferred leader), except that a leader
        // region's node comes first.
        var ordered = ranked.filter { node in chosen.contains { $0.nodeID == node.nodeID } }
        if !leaderRegion.isEmpty, let index = ordered.firstIndex(where: { $0.region == leaderRegion }) {
            ordered.insert(ordered.remove(at: index), at: 0)
        }
        return ordered.map(\.nodeID)
    }

    static func score(_ group: UInt32, _ node: UInt64) -> UInt64 {
        var z = (UInt64(group) &* 0x9E37_79B9_7F4A_7C15) ^ (node &* 0xBF58_476D_1CE4_E5B9)
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
