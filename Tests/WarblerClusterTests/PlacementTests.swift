import Testing
import WarblerCluster

struct PlacementTests {
    func nodes(_ ids: [UInt64], regions: [String]? = nil) -> [NodeInfo] {
        ids.enumerated().map { offset, id in
            var node = NodeInfo()
            node.nodeID = id
            node.region = regions?[offset] ?? ""
            return node
        }
    }

    @Test func replicasAreDistinctDeterministicAndSpreadLeadership() {
        let cluster = nodes([1, 2, 3, 4, 5])
        var preferred: [UInt64: Int] = [:]
        for group in UInt32(1)...64 {
            let replicas = Placement.replicas(of: group, among: cluster, count: 3)
            #expect(Set(replicas).count == 3)
            #expect(replicas == Placement.replicas(of: group, among: cluster.reversed(), count: 3))
            preferred[replicas[0], default: 0] += 1
        }
        // Every node is the preferred leader of some partitions.
        #expect(preferred.count == 5)
        #expect(preferred.values.allSatisfy { $0 >= 4 })
    }

    @Test func replicasSpreadOverRegionsFirst() {
        let cluster = nodes([1, 2, 3, 4, 5, 6], regions: ["eu", "eu", "us", "us", "ap", "ap"])
        for group in UInt32(0)...64 {
            let replicas = Placement.replicas(of: group, among: cluster, count: 3)
            let regions = Set(replicas.map { id in cluster.first { $0.nodeID == id }!.region })
            #expect(regions.count == 3, "group \(group) has replicas \(replicas)")
        }
    }

    @Test func addingANodeMovesOnlyWhatTheNewNodeWins() {
        let before = nodes([1, 2, 3, 4])
        let after = nodes([1, 2, 3, 4, 5])
        var moved = 0
        for group in UInt32(1)...256 {
            let old = Set(Placement.replicas(of: group, among: before, count: 3))
            let new = Set(Placement.replicas(of: group, among: after, count: 3))
            let lost = old.subtracting(new)
            #expect(lost.count <= 1)
            if !lost.isEmpty {
                #expect(new.contains(5))
                moved += 1
            }
        }
        // About 3/5 of the groups gain the new node; none is reshuffled otherwise.
        #expect(moved > 100 && moved < 210)
    }

    @Test func fewerNodesThanReplicasUsesEveryNode() {
        #expect(Set(Placement.replicas(of: 7, among: nodes([4, 9]), count: 3)) == [4, 9])
    }
}

struct LeaderRegionTests {
    @Test func aLeaderRegionPutsAReplicaThereAndFirst() {
        let regions = ["eu", "eu", "us", "us", "ap", "ap"]
        let cluster = (1...6).map { id -> NodeInfo in
            var node = NodeInfo()
            node.nodeID = UInt64(id)
            node.region = regions[id - 1]
            return node
        }
        func region(_ id: UInt64) -> String { regions[Int(id) - 1] }
        for group in UInt32(0)...64 {
            let replicas = Placement.replicas(of: group, among: cluster, count: 3, leaderRegion: "ap")
            #expect(region(replicas[0]) == "ap")
            #expect(Set(replicas.map(region)).count == 3)
            let single = Placement.replicas(of: group, among: cluster, count: 1, leaderRegion: "us")
            #expect(single.count == 1 && region(single[0]) == "us")
        }
        // An unknown region changes nothing.
        #expect(
            Placement.replicas(of: 9, among: cluster, count: 3, leaderRegion: "mars")
                == Placement.replicas(of: 9, among: cluster, count: 3)
        )
    }
}
