import Dispatch
import Foundation
import Logging
import Synchronization
import WarblerRaft
import WarblerStorage
import WarblerWire

// Leaders move their groups toward the desired placement (on the scheduler queue).
extension RaftHost {

    /// Leaders move their groups toward the desired placement, one membership change at a time: add missing
    /// replicas as learners, promote learners that caught up, demote or remove what should not vote, and hand
    /// leadership to a less loaded node when this one leads more than its share.
    ///
    /// The placement chooses each group's **voters**; every other active node holds a **learner** replica, so
    /// that every node serves reads and delivers messages from local state. Nodes that are leaving hold nothing.
    func reconcile() {
        guard let info = view.info else { return }
        let active = view.activeNodes
        guard !active.isEmpty else { return }
        let ledByMe = groups.values.filter { $0.node.softState.role == .leader }.count
        let fairShare = (groups.count + active.count - 1) / active.count
        var transferred = false
        for group in groups.values where group.node.softState.role == .leader {
            let count =
                group.id == 0 ? min(Placement.maxMetadataVoters, active.count) : Int(info.replicationFactor)
            let region = info.preferredLeaderRegion[group.id] ?? ""
            let voters = Placement.replicas(of: group.id, among: active, count: count, leaderRegion: region)
            var changed = reconcileMembers(group, voters: voters, members: Set(active.map(\.nodeID)))
            if !changed, !region.isEmpty { changed = moveLeader(group, toRegion: region, preferred: voters[0]) }
            if !changed, !transferred, ledByMe > fairShare + 1 { transferred = balanceLeader(group) }
        }
    }

    func reconcileMembers(_ group: Group, voters desired: [UInt64], members: Set<UInt64>) -> Bool {
        let conf = group.node.confState
        let progress = group.node.progress
        let lastIndex = group.node.lastIndex
        let present = conf.voters.union(conf.learners)
        var change: ConfChange?
        if let missing = desired.first(where: { !present.contains($0) })
            ?? members.sorted().first(where: { !present.contains($0) })
        {
            change = ConfChange(.addLearner, nodeID: missing)
        } else if let ready = conf.learners.sorted().first(where: {
            desired.contains($0) && (progress[$0]?.match ?? 0) + 100 >= lastIndex
        }) {
            change = ConfChange(.addNode, nodeID: ready)
        } else if desired.allSatisfy({ conf.voters.contains($0) }),
            let extra = conf.voters.sorted().first(where: { !desired.contains($0) })
        {
            if extra == nodeID {
                // Hand the group to a desired voter first; the new leader demotes or removes this node.
                if let target = desired.first(where: { (progress[$0]?.match ?? 0) >= lastIndex && isAlive($0) }) {
                    try? group.node.transferLeadership(to: target)
                }
                return true
            }
            change = ConfChange(members.contains(extra) ? .addLearner : .removeNode, nodeID: extra)
        } else if let gone = conf.learners.sorted().first(where: { !members.contains($0) }) {
            change = ConfChange(.removeNode, nodeID: gone)
        }
        guard let change else { return false }
        do {
            try group.node.proposeConfChange(change)
            logger.info(
                "moving a replica",
                metadata: ["raft.group": "\(group.id)", "change": "\(change.kind)", "raft.node": "\(change.nodeID)"]
            )
        } catch {
            // One change at a time: the previous one is still pending.
        }
        return true
    }

    /// Hands leadership to `preferred` when this node is outside the group's leader region and it caught up.
    func moveLeader(_ group: Group, toRegion region: String, preferred: UInt64) -> Bool {
        guard view.nodes[nodeID]?.region != region, view.nodes[preferred]?.region == region,
            group.node.confState.voters.contains(preferred),
            (group.node.progress[preferred]?.match ?? 0) >= group.node.lastIndex, isAlive(preferred)
        else { return false }
        try? group.node.transferLeadership(to: preferred)
        logger.info("moving a leader to its region", metadata: ["raft.group": "\(group.id)", "region": "\(region)"])
        return true
    }

    func balanceLeader(_ group: Group) -> Bool {
        let leaders = published.withLock { $0.leaders }
        var load: [UInt64: Int] = [:]
        for leader in leaders.values where leader != 0 { load[leader, default: 0] += 1 }
        let progress = group.node.progress
        let lastIndex = group.node.lastIndex
        let region = view.info?.preferredLeaderRegion[group.id] ?? ""
        let candidates = group.node.confState.voters.filter {
            $0 != nodeID && (progress[$0]?.match ?? 0) >= lastIndex && isAlive($0)
                && (region.isEmpty || view.nodes[$0]?.region == region)
        }
        guard let target = candidates.min(by: { (load[$0] ?? 0, $0) < (load[$1] ?? 0, $1) }),
            (load[target] ?? 0) + 1 < (load[nodeID] ?? 0)
        else { return false }
        try? group.node.transferLeadership(to: target)
        return true
    }

    /// True when `node`'s frames arrived within the liveness window: leadership is only ever handed to a node
    /// that is up (a dead node's log can look caught up in a lull, and a transfer to it would stall the group
    /// until the transfer times out — again and again).
    func isAlive(_ node: UInt64) -> Bool {
        let window = options.tickInterval * options.livenessTicks
        let now = ContinuousClock.now
        return liveness.withLock { $0[node].map { now - $0.heard < window } ?? false }
    }
}
