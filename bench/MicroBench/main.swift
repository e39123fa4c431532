// warbler-micro-bench: the hot pieces on their own — the client frame codec, and appending Raft entries to
// RocksDB with group commit (one fsync per batch). The Raft core has its own: warbler-raft-bench.
//
// Usage: warbler-micro-bench [codec|storage|all] [--seconds S]

import Foundation
import NIOCore
import WarblerRaft
import WarblerStorage
import WarblerWire

#if canImport(Glibc)
import Glibc
#endif

func now() -> Double {
    var spec = timespec()
    clock_gettime(CLOCK_MONOTONIC, &spec)
    return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
}

func pad(_ text: String, _ width: Int) -> String {
    String(repeating: " ", count: max(0, width - text.count)) + text
}

/// Runs `body` (which does `unit` operations per call) for about `seconds`; returns operations per second.
func measure(seconds: Double, unit: Int = 1, _ body: () throws -> Void) rethrows -> Double {
    // Warm-up: a tenth of the time.
    let warmUpEnd = now() + seconds / 10
    while now() < warmUpEnd { try body() }
    var operations = 0
    let start = now()
    var elapsed = 0.0
    repeat {
        for _ in 0..<16 { try body() }
        operations += 16 * unit
        elapsed = now() - start
    } while elapsed < seconds
    return Double(operations) / elapsed
}

/// The body of one length-prefixed frame, through the decoder the node uses.
func unframe(_ frame: ByteBuffer) throws -> ByteBuffer {
    var buffer = frame
    var decoder = FrameDecoder(maxFrameBytes: 1 << 20)
    guard let body = try decoder.decode(buffer: &buffer) else { fatalError("incomplete frame") }
    return body
}

func codec(seconds: Double) throws {
    let allocator = ByteBufferAllocator()
    var send = Warbler_V1_ClientFrame()
    send.requestID = 42
    send.send.conversationID = "d-0123456789abcdef0123456789abcdef"
    send.send.clientMessageID = UUID().uuidString
    send.send.payload = Data(repeating: 0x61, count: 128)
    var push = Warbler_V1_ServerFrame()
    push.messagePush.message.conversationID = send.send.conversationID
    push.messagePush.message.seq = 123_456
    push.messagePush.message.sender = "bench-s0"
    push.messagePush.message.clientMessageID = send.send.clientMessageID
    push.messagePush.message.payload = send.send.payload
    push.messagePush.message.serverTimeUnixMs = 1_790_000_000_000

    print("frame codec (128-byte payloads, length-prefixed protobuf), \(seconds) s each")
    print("\(pad("operation", 34)) \(pad("frames/s", 12)) \(pad("ns/frame", 10))")
    let encodedSend = FrameCodec.lengthPrefixed(send, allocator: allocator)
    let encodedPush = FrameCodec.lengthPrefixed(push, allocator: allocator)
    let cases: [(String, () throws -> Void)] = [
        ("encode Send (client → node)", { _ = FrameCodec.lengthPrefixed(send, allocator: allocator) }),
        ("decode Send", { _ = try FrameCodec.decodeClientFrame(try unframe(encodedSend)) }),
        ("encode MessagePush (node → client)", { _ = FrameCodec.lengthPrefixed(push, allocator: allocator) }),
        ("decode MessagePush", { _ = try FrameCodec.decodeServerFrame(try unframe(encodedPush)) }),
    ]
    for (name, body) in cases {
        let rate = try measure(seconds: seconds, body)
        print("\(pad(name, 34)) \(pad(String(Int(rate)), 12)) \(pad(String(format: "%.0f", 1e9 / rate), 10))")
    }
}

func storage(seconds: Double) throws {
    let path = NSTemporaryDirectory() + "warbler-micro-\(UUID().uuidString)"
    defer { try? FileManager.default.removeItem(atPath: path) }
    var options = Database.Options()
    options.columnFamilies = ["raft"]
    let database = try Database(path: path, options: options)
    let family = try database.columnFamily("raft")
    let log = try RaftLogStore(database: database, family: family, group: 1)
    let bootstrap = WriteBatch()
    try log.bootstrap(ConfState(voters: [1]), into: bootstrap)
    try database.write(bootstrap, sync: true)
    let payload = [UInt8](repeating: 0x61, count: 128)
    var next = try log.lastIndex() + 1

    print("")
    print("Raft log append to RocksDB (RaftLogStore, 128-byte entries, LZ4), one fsync per batch, \(seconds) s each")
    print("\(pad("batch", 6)) \(pad("entries/s", 12)) \(pad("fsyncs/s", 10)) \(pad("µs/fsync'd batch", 18))")
    for batchSize in [1, 16, 256] {
        let rate = try measure(seconds: seconds, unit: batchSize) {
            let batch = WriteBatch()
            var entries: [Entry] = []
            entries.reserveCapacity(batchSize)
            for _ in 0..<batchSize {
                entries.append(Entry(term: 1, index: next, data: payload))
                next += 1
            }
            log.stage(entries: entries, into: batch)
            log.stage(hardState: HardState(term: 1, vote: 1, commit: next - 1), into: batch)
            try database.write(batch, sync: true)
            // Keep the log short, as compaction would.
            if next % 50_000 < UInt64(batchSize) {
                let compaction = WriteBatch()
                try log.stageCompaction(at: next - 1, confState: ConfState(voters: [1]), data: [], into: compaction)
                try database.write(compaction, sync: false)
            }
        }
        let batches = rate / Double(batchSize)
        print(
            "\(pad(String(batchSize), 6)) \(pad(String(Int(rate)), 12)) \(pad(String(Int(batches)), 10)) "
                + pad(String(format: "%.1f", 1e6 / batches), 18)
        )
    }
}

var arguments = Array(CommandLine.arguments.dropFirst())
var seconds = 2.0
if let flag = arguments.firstIndex(of: "--seconds"), flag + 1 < arguments.count {
    seconds = Double(arguments[flag + 1]) ?? seconds
    arguments.removeSubrange(flag...(flag + 1))
}
let which = arguments.first ?? "all"
guard ["codec", "storage", "all"].contains(which) else {
    print("usage: warbler-micro-bench [codec|storage|all] [--seconds S]")
    exit(2)
}
if which != "storage" { try codec(seconds: seconds) }
if which != "codec" { try storage(seconds: seconds) }
