import Foundation
import Synchronization
import WarblerClient
import WarblerWire

extension WarblerBench {
    /// Every node holds every acknowledged message at its seq, gap-free, and the same sequence as the others.
    /// Returns how many messages were checked; says so on standard output (standard error with `--json`, whose
    /// output is the report alone).
    func check(_ acknowledged: AcknowledgedMessages, fleet: Fleet) async throws -> Int {
        let expected = acknowledged.all
        var total = 0
        for (conversation, reader) in acknowledged.readers {
            var reference: [Data]?
            for (index, target) in fleet.targets.enumerated() {
                let payloads = try await history(of: conversation, as: reader, node: index, fleet: fleet)
                for (seq, payload) in expected[conversation] ?? [:] {
                    guard payloads.indices.contains(Int(seq) - 1), payloads[Int(seq) - 1] == payload else {
                        throw VerificationFailure(
                            "\(target.host):\(target.port) lacks acknowledged \(conversation)/\(seq)"
                        )
                    }
                }
                if let reference, reference != payloads {
                    throw VerificationFailure("\(target.host):\(target.port) holds another sequence of \(conversation)")
                }
                reference = payloads
            }
            total += expected[conversation]?.count ?? 0
        }
        let line =
            "verified: \(total) acknowledged messages present, gap-free and in one order on \(fleet.targets.count) node(s)"
        if json { FileHandle.standardError.write(Data((line + "\n").utf8)) } else { print(line) }
        return total
    }

    /// Every message of `conversation` as node `node` holds it, in seq order. A node that is restarting (a chaos
    /// run may have just killed it) is retried for up to 60 seconds.
    func history(of conversation: String, as reader: String, node: Int, fleet: Fleet) async throws -> [Data] {
        let deadline = Date().addingTimeInterval(60)
        while true {
            do {
                let client = try await fleet.connect(reader, node: node)
                let payloads: [Data]
                do { payloads = try await Self.history(of: conversation, from: client) } catch {
                    await client.close()
                    throw error
                }
                await client.close()
                return payloads
            } catch {
                if Date() > deadline { throw error }
                try await Task.sleep(nanoseconds: 500_000_000)
            }
        }
    }

    static func history(of conversation: String, from client: WarblerClient) async throws -> [Data] {
        var payloads: [Data] = []
        var before: UInt64 = 0
        while true {
            let page = try await client.history(of: conversation, before: before, limit: 500)
            payloads = page.messages.map(\.payload) + payloads
            guard let first = page.messages.first, page.more else { return payloads }
            before = first.seq
        }
    }
}

/// Sends until acknowledged, resending the same client message id (which never creates a second message).
func sendUntilAcknowledged(
    _ payload: Data,
    id: String,
    to conversation: String,
    with client: WarblerClient
)
    async throws -> Warbler_V1_Ack
{
    let deadline = Date().addingTimeInterval(120)
    while true {
        do { return try await client.send(payload, to: conversation, clientMessageID: id) } catch {
            if Date() > deadline { throw VerificationFailure("\(id) not acknowledged within 120 s: \(error)") }
            try await Task.sleep(nanoseconds: 100_000_000)
        }
    }
}

/// What the nodes acknowledged, per conversation and seq.
final class AcknowledgedMessages: Sendable {
    private let messages = Mutex<[String: [UInt64: Data]]>([:])
    private let readerOf = Mutex<[String: String]>([:])
    /// A member who may read `conversation` (the check logs in as it).
    func reader(of conversation: String, is user: String) { readerOf.withLock { $0[conversation] = user } }
    var readers: [String: String] { readerOf.withLock { $0 } }
    func record(conversation: String, seq: UInt64, payload: Data) {
        messages.withLock { $0[conversation, default: [:]][seq] = payload }
    }
    var all: [String: [UInt64: Data]] { messages.withLock { $0 } }
}

struct VerificationFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
