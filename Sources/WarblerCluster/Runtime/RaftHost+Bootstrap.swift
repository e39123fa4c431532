import Dispatch
import Foundation
import Logging
import Synchronization
import WarblerRaft
import WarblerStorage
import WarblerWire

// Creating a cluster in an empty data directory, and the node identity record.
extension RaftHost {

    /// Writes the first state of a new cluster whose only member is `node`: the metadata group (holding the
    /// cluster's info and this node) and `partitionCount` partition groups, each a one-voter group.
    ///
    /// - Throws: ``StorageError`` `invalidArgument` when the database already belongs to a cluster.
    public static func initializeCluster(
        database: Database,
        raftFamily: ColumnFamily,
        clusterFamily: ColumnFamily,
        node: NodeInfo,
        partitionCount: UInt32,
        replicationFactor: UInt32
    ) throws -> String {
        if try identity(database: database, clusterFamily: clusterFamily) != nil
            || !(try RaftLogStore.groups(in: database, family: raftFamily)).isEmpty
        {
            throw StorageError(.invalidArgument, "this data directory already belongs to a cluster")
        }
        guard (1...4096).contains(partitionCount), (1...7).contains(replicationFactor) else {
            throw StorageError(.invalidArgument, "partitions must be 1…4096 and the replication factor 1…7")
        }
        var info = ClusterInfo()
        info.clusterID = UUID().uuidString.lowercased()
        info.partitionCount = partitionCount
        info.replicationFactor = replicationFactor
        var member = node
        member.state = .active
        let view = ClusterView(info: info, nodes: [member.nodeID: member])
        let batch = WriteBatch()
        let conf = ConfState(voters: [node.nodeID])
        var metadataSnapshot = Warbler_Peer_V1_GroupSnapshot()
        metadataSnapshot.cluster = view.records.map(\.record)
        // An existing log is refused by `bootstrap`.
        let metadataLog = try RaftLogStore(database: database, family: raftFamily, group: 0)
        try metadataLog.bootstrap(conf, data: try metadataSnapshot.serializedBytes(), into: batch)
        for record in view.records { batch.put(record.key, record.value, in: clusterFamily) }
        for partition in 1...partitionCount {
            let log = try RaftLogStore(database: database, family: raftFamily, group: partition)
            try log.bootstrap(conf, into: batch)
        }
        try writeIdentity(node: member, clusterID: info.clusterID, database: database, family: clusterFamily, batch)
        try database.write(batch, sync: true)
        return info.clusterID
    }

    /// Records that this data directory belongs to `clusterID` as `node` (a node that joined).
    public static func recordMembership(
        node: NodeInfo,
        clusterID: String,
        database: Database,
        clusterFamily: ColumnFamily
    ) throws {
        let batch = WriteBatch()
        try writeIdentity(node: node, clusterID: clusterID, database: database, family: clusterFamily, batch)
        try database.write(batch, sync: true)
    }

    static func writeIdentity(
        node: NodeInfo,
        clusterID: String,
        database: Database,
        family: ColumnFamily,
        _ batch: WriteBatch
    ) throws {
        var identity = Warbler_Peer_V1_JoinAccepted()
        identity.clusterID = clusterID
        identity.nodes = [node]
        batch.put(ClusterView.identityKey, try identity.serializedBytes(), in: family)
    }

    /// This data directory's node and cluster, or nil when it never joined or initialised one.
    public static func identity(
        database: Database,
        clusterFamily: ColumnFamily
    ) throws -> (
        node: NodeInfo, clusterID: String
    )? {
        guard let bytes = try database.get(ClusterView.identityKey, in: clusterFamily) else { return nil }
        let identity = try Warbler_Peer_V1_JoinAccepted(serializedBytes: bytes)
        guard let node = identity.nodes.first else {
            throw StorageError(.corruption, "the node identity record names no node")
        }
        return (node, identity.clusterID)
    }
}
