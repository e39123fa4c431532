import Dispatch
import Foundation
import Logging
import Synchronization
import WarblerRaft
import WarblerStorage
import WarblerWire

// Operator commands and the peer-transport entry points.
extension RaftHost {

    /// Hands leadership of `group` to `target` (forwarded to the group's leader when needed).
    public func transferLeader(group id: UInt32, to target: UInt64) async throws {
        let leader = leader(of: id)
        if leader == nodeID || leader == 0 {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                enqueue {
                    guard let group = self.groups[id], group.node.softState.role == .leader else {
                        continuation.resume(
                            throwing: ClusterError(.unavailable, "node \(self.nodeID) does not lead group \(id)")
                        )
                        return
                    }
                    do {
                        try group.node.transferLeadership(to: target)
                        continuation.resume()
                    } catch {
                        continuation.resume(throwing: ClusterError(.refused, "\(error)"))
                    }
                }
            }
            return
        }
        guard let transport else { throw ClusterError(.unavailable, "no transport") }
        var request = Warbler_Peer_V1_TransferLeader()
        request.group = id
        request.to = target
        let response = try await transport.request(.transferLeader(request), to: leader)
        if case .error(let error) = response.body {
            throw ClusterError(error)
        }
    }

    /// Every group this node replicates, as it sees them.
    public func status() async -> ClusterStatus {
        await withCheckedContinuation { (continuation: CheckedContinuation<ClusterStatus, Never>) in
            enqueue {
                var status = ClusterStatus()
                status.nodeID = self.nodeID
                status.clusterID = self.view.info?.clusterID ?? ""
                status.partitionCount = self.view.info?.partitionCount ?? 0
                status.replicationFactor = self.view.info?.replicationFactor ?? 0
                status.nodes = self.view.nodes.values.sorted { $0.nodeID < $1.nodeID }
                status.preferredLeaderRegion = self.view.info?.preferredLeaderRegion ?? [:]
                for group in self.groups.values.sorted(by: { $0.id < $1.id }) {
                    var record = Warbler_Peer_V1_GroupStatus()
                    record.group = group.id
                    record.leader = group.node.softState.lead
                    record.term = group.node.hardState.term
                    record.commit = group.node.hardState.commit
                    record.applied = group.applier.appliedIndex
                    record.voters = group.node.confState.voters.sorted()
                    record.learners = group.node.confState.learners.sorted()
                    record.quiet = group.quietTicks >= 3 || group.suspended
                    let last = group.node.lastIndex
                    for (peer, progress) in group.node.progress { record.lag[peer] = last - min(last, progress.match) }
                    status.groups.append(record)
                }
                continuation.resume(returning: status)
            }
        }
    }
}

extension RaftHost {
    /// What this host's transport should hand its traffic to (``PeerTransport/setDelegate(_:)``): closures made
    /// here rather than a conformance of `RaftHost` itself. A generic class's conformance runs the class's
    /// unspecialised code, with the state machine's type looked up at run time — every Raft round a peer's
    /// message starts (all of a follower's) would; closures made in a specialised context run specialised code.
    /// Call it where the state machine's type is known.
    public func peerDelegate() -> PeerTransportHandlers {
        PeerTransportHandlers(
            received: { batch, node in self.receive(batch, from: node) },
            lost: { node in self.lost(node) },
            propose: { batch, _, reply in self.handleForwarded(batch, reply: reply) },
            handle: { request, node in await self.handle(request, from: node) }
        )
    }

    /// A request from another node (or an operator's one-off connection).
    func handle(_ request: PeerRequest, from node: UInt64) async -> PeerResponse {
        var response = PeerResponse()
        switch request.body {
        case .propose(let propose):
            return await handleForwarded(propose)
        case .proposeBatch:
            // The transport hands batches to ``peerTransport(propose:from:reply:)`` in order, never here.
            response.error.code = "peer.unknown_request"
            response.error.message = "a batch of proposals outside the transport's order"
        case .join(let join):
            do {
                var command = ClusterCommand()
                command.addNode = join
                try await propose(command)
                // Wait until this node's metadata shows the new node, so the answer lists it.
                var accepted = Warbler_Peer_V1_JoinAccepted()
                accepted.clusterID = clusterView.info?.clusterID ?? ""
                accepted.nodes = clusterView.nodes.values.sorted { $0.nodeID < $1.nodeID }
                response.joinAccepted = accepted
            } catch {
                response.error = Self.peerError(error)
            }
        case .removeNode(let remove):
            do {
                var command = ClusterCommand()
                command.removeNode = remove
                try await propose(command)
                response.done = Warbler_Peer_V1_Done()
            } catch {
                response.error = Self.peerError(error)
            }
        case .transferLeader(let transfer):
            do {
                try await transferLeader(group: transfer.group, to: transfer.to)
                response.done = Warbler_Peer_V1_Done()
            } catch {
                response.error = Self.peerError(error)
            }
        case .status:
            response.status = await status()
        case .setPreferredRegion(let preference):
            do {
                var command = ClusterCommand()
                command.setPreferredRegion = preference
                try await propose(command)
                response.done = Warbler_Peer_V1_Done()
            } catch {
                response.error = Self.peerError(error)
            }
        case .readIndex(let read):
            do {
                try await readBarrier(group: read.group)
                response.done = Warbler_Peer_V1_Done()
            } catch {
                response.error = Self.peerError(error)
            }
        case nil:
            response.error.code = "peer.unknown_request"
            response.error.message = "empty or unknown request"
        }
        return response
    }
}

extension StateRecord {
    init(_ record: Warbler_Peer_V1_KeyValue) { self.init(key: [UInt8](record.key), value: [UInt8](record.value)) }

    var record: Warbler_Peer_V1_KeyValue {
        var record = Warbler_Peer_V1_KeyValue()
        record.key = Data(key)
        record.value = Data(value)
        return record
    }
}
