// warbler-raft-bench: committed entries per second through a 3-node in-memory Raft group, with no I/O.
//
// Each round the leader proposes a batch; every node handles its Ready (persisting into MemoryStorage), and
// messages are delivered directly, until the batch is committed and applied on the leader. Several batches are
// kept in flight so that the pipeline stays full. Storages are compacted as they grow.

import WarblerRaft

#if canImport(Glibc)
import Glibc
#endif

struct Cluster {
    var nodes: [RawNode] = []
    var storages: [MemoryStorage] = []
    var applied = 0

    init(size: Int) throws {
        let voters = Set((1...size).map { NodeID($0) })
        for id in 1...size {
            let storage = MemoryStorage(bootstrap: ConfState(voters: voters))
            var config = Config(id: NodeID(id))
            config.maxInflightMsgs = 4096
            config.maxSizePerMsg = 1 << 20
            storages.append(storage)
            nodes.append(try RawNode(config: config, storage: storage))
        }
        nodes[0].campaign()
        while pump() {}
    }

    /// One scheduling round: every node persists its Ready, then messages are delivered. Returns true if
    /// anything happened.
    mutating func pump() -> Bool {
        var outgoing: [Message] = []
        var progressed = false
        for position in nodes.indices where nodes[position].hasReady {
            progressed = true
            let ready = nodes[position].ready()
            let storage = storages[position]
            if let snapshot = ready.snapshot { try! storage.applySnapshot(snapshot) }
            storage.append(ready.entries)
            if let hard = ready.hardState { storage.setHardState(hard) }
            outgoing.append(contentsOf: ready.messages)
            if position == 0 { applied += ready.committedEntries.count }
            nodes[position].advance(ready)
        }
        for message in outgoing { try? nodes[Int(message.to) - 1].step(message) }
        return progressed
    }

    mutating func compact() {
        for position in nodes.indices {
            let index = nodes[position].appliedIndex
            guard index > 1 else { continue }
            let storage = storages[position]
            if (try? storage.createSnapshot(at: index, confState: nodes[position].confState, data: [])) != nil {
                try? storage.compact(upTo: index)
            }
        }
    }
}

func pad(_ text: String, _ width: Int) -> String {
    text + String(repeating: " ", count: max(0, width - text.count))
}

func now() -> Double {
    var spec = timespec()
    clock_gettime(CLOCK_MONOTONIC, &spec)
    return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
}

let arguments = CommandLine.arguments
let total = arguments.count > 1 ? Int(arguments[1]) ?? 2_000_000 : 2_000_000
let payload = [UInt8](repeating: 0x61, count: 16)
print("3-node in-memory Raft group, \(payload.count)-byte entries, \(total) entries per batch size")
print("batch  entries/s   ns/entry")
for batchSize in [1, 16, 256] {
    var cluster = try Cluster(size: 3)
    let batch = [[UInt8]](repeating: payload, count: batchSize)
    let entries = batchSize == 1 ? total / 8 : total
    let inFlightBatches = max(1, 4096 / batchSize)
    var proposed = 0
    let base = cluster.applied
    let start = now()
    while cluster.applied - base < entries {
        while proposed - (cluster.applied - base) < inFlightBatches * batchSize && proposed < entries {
            try cluster.nodes[0].proposeBatch(batch)
            proposed += batchSize
        }
        _ = cluster.pump()
        if cluster.storages[0].hardState.commit % 65_536 < UInt64(batchSize) { cluster.compact() }
    }
    let elapsed = now() - start
    let count = cluster.applied - base
    let rate = Double(count) / elapsed
    print(pad("\(batchSize)", 7) + pad("\(Int(rate))", 12) + "\(Int(elapsed / Double(count) * 1e9))")
}
