import Dispatch
import Foundation
import Logging
import Synchronization
import WarblerRaft
import WarblerStorage
import WarblerWire

// Idle groups go quiet; node liveness stands in for their heartbeats (on the scheduler queue).
extension RaftHost {
    /// Quiescence: how many times to tick `group` now. A leader with nothing in flight for 3 ticks stops
    /// ticking (no heartbeats); a follower does not tick while its leader's node is alive and has not restarted
    /// — the node's liveness frames stand in for the group's heartbeats. When a suspended follower's leader goes
    /// silent, it catches up the ticks since the leader was last heard, so an election starts as soon as it would
    /// have without quiescence.
    func ticksDue(
        _ group: Group,
        live: [UInt64: (incarnation: UInt64, heard: ContinuousClock.Instant)],
        now: ContinuousClock.Instant,
        window: Duration
    ) -> Int {
        guard options.quiesce else { return 1 }
        let soft = group.node.softState
        if soft.role == .leader {
            group.suspended = false
            // A leader that cannot hear a quorum's nodes ticks, so that check-quorum makes it step down: a node
            // cut off from the others must not go on calling itself leader.
            let voters = group.node.confState.voters
            let alive = voters.filter { $0 == nodeID || live[$0].map { now - $0.heard < window } == true }.count
            let quiet = isQuiet(group) && alive * 2 > voters.count
            group.quietTicks = quiet ? group.quietTicks + 1 : 0
            return group.quietTicks < 3 ? 1 : 0
        }
        guard soft.role == .follower, soft.lead != noneNode, soft.lead != nodeID else {
            group.suspended = false
            return 1
        }
        let peer = live[soft.lead]
        if let peer, now - peer.heard < window, peer.incarnation == group.leaderIncarnation {
            group.suspended = true
            return 0
        }
        guard group.suspended else { return 1 }
        group.suspended = false
        let silent = peer.map { Int((now - $0.heard) / options.tickInterval) } ?? options.livenessTicks
        return 1 + min(max(silent - 1, 0), options.electionTicks - 1)
    }

    /// A learner never campaigns, so one that restarted into a quiet group would not learn its leader until the
    /// group is busy again. It asks the voters for a read barrier instead: that wakes the leader, whose
    /// heartbeats then reach the learner.
    func wakeLeaderlessLearners(_ transport: PeerTransport) {
        for group in groups.values
        where group.node.softState.lead == noneNode && group.node.confState.learners.contains(nodeID) {
            var read = Warbler_Peer_V1_ReadIndex()
            read.group = group.id
            let request = PeerRequest.OneOf_Body.readIndex(read)
            for voter in group.node.confState.voters {
                Task { [request] in _ = try? await transport.request(request, to: voter, timeout: .seconds(2)) }
            }
        }
    }

    func isQuiet(_ group: Group) -> Bool {
        let node = group.node
        guard group.waiting.isEmpty, group.readRequests.isEmpty, !group.applier.hasPendingReads,
            node.leadTransferee == noneNode, node.hardState.commit == node.lastIndex,
            group.applier.appliedIndex == node.lastIndex
        else { return false }
        let last = node.lastIndex
        return node.progress.values.allSatisfy { $0.match == last }
    }

    /// A peer's connection closed: its groups' followers stop relying on its liveness at once.
    func lost(_ peer: UInt64) {
        liveness.withLock { _ = $0.removeValue(forKey: peer) }
    }
}
