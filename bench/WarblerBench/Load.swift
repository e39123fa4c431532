import Foundation
import NIOCore
import Synchronization
import WarblerClient
import WarblerWire

#if canImport(Glibc)
import Glibc
#endif

/// How sends are paced: closed loop (a window of unacknowledged sends per connection) or open loop (a fixed
/// total rate; latency is measured from each send's intended time, which corrects for coordinated omission).
enum LoadShape: Sendable {
    case closed(window: Int)
    case open(ratePerSecond: Double)

    var description: String {
        switch self {
        case .closed(let window): "closed loop, window \(window)"
        case .open(let rate): "open loop, \(Int(rate)) msgs/s"
        }
    }
}

/// A connection that sends into one conversation.
struct Sender: Sendable {
    var client: WarblerClient
    var conversation: String
}

/// Drives `senders` until the measured window ends; every ack goes to `counters`.
func drive(
    _ senders: [Sender],
    shape: LoadShape,
    payloadBytes: Int,
    counters: RunCounters,
    verify: AcknowledgedMessages? = nil
) async {
    switch shape {
    case .closed(let window):
        await withDiscardingTaskGroup { group in
            for sender in senders {
                for _ in 0..<window {
                    // On the connection's event loop: a reply resumes its sender without a thread switch.
                    group.addTask(executorPreference: sender.client.executor) {
                        while !counters.finished {
                            await send(
                                sender,
                                intended: monotonicNanoseconds(),
                                bytes: payloadBytes,
                                counters,
                                verify: verify
                            )
                        }
                    }
                }
            }
        }
    case .open(let rate):
        // Each sender keeps its own schedule (rate / senders), staggered so that they do not fire together.
        let interval = Double(senders.count) / rate * 1e9
        let start = monotonicNanoseconds()
        await withDiscardingTaskGroup { group in
            for (index, sender) in senders.enumerated() {
                group.addTask(executorPreference: sender.client.executor) {
                    await withDiscardingTaskGroup { sends in
                        var next = Double(start) + interval * Double(index) / Double(senders.count)
                        let outstanding = InFlight()
                        while !counters.finished {
                            let now = Double(monotonicNanoseconds())
                            while next <= now {
                                let intended = UInt64(next)
                                next += interval
                                // Beyond this many in flight the node is far past saturation; the schedule (and
                                // so every late send's latency) still counts from the intended times.
                                if outstanding.count.load(ordering: .relaxed) >= 10_000 { continue }
                                outstanding.count.add(1, ordering: .relaxed)
                                sends.addTask(executorPreference: sender.client.executor) {
                                    await send(
                                        sender,
                                        intended: intended,
                                        bytes: payloadBytes,
                                        counters,
                                        verify: verify
                                    )
                                    outstanding.count.subtract(1, ordering: .relaxed)
                                }
                            }
                            await pause(
                                nanoseconds: Int64(max(next - Double(monotonicNanoseconds()), 0)),
                                on: sender.client.eventLoop
                            )
                        }
                    }
                }
            }
        }
    }
}

/// How often at most an open-loop sender wakes up: on a grid of this step shared by every sender, so that the
/// senders on one event loop wake together, once per step. The sends that fall due meanwhile go out together,
/// and each one's latency still counts from its own intended time (the wait counts against the node, never for
/// it). Waking for every send — every 50 µs at 20,000 sends/s — cost the bench 0.77 cores against 0.45 with this
/// step, CPU the node on the same two cores did not get (docs/performance.md).
let openLoopTickNanoseconds: Int64 = 500_000

/// Waits on `loop`'s own timer for at least `nanoseconds`, until the next step of the open loop's grid
/// (``openLoopTickNanoseconds``). A task that runs on that loop resumes there with no other thread involved
/// (`Task.sleep` goes through the global executor's timer and threads, then hops back to the loop).
func pause(nanoseconds: Int64, on loop: any EventLoop) async {
    let step = openLoopTickNanoseconds
    let due = Int64(NIODeadline.now().uptimeNanoseconds) + nanoseconds
    let wake = NIODeadline.uptimeNanoseconds(UInt64((due / step + 1) * step))
    _ = try? await loop.scheduleTask(deadline: wake) {}.futureResult.get()
}

/// One send, stamped with its intended time; an error is counted, not thrown. With `verify`, a failed send is
/// retried with the same client message id until acknowledged, and the ack is recorded for the final check.
func send(
    _ sender: Sender,
    intended: UInt64,
    bytes: Int,
    _ counters: RunCounters,
    verify: AcknowledgedMessages? = nil
) async {
    var payload = StampedPayload.make(size: bytes, stamp: intended)
    if counters.measured(intended) { counters.sends.add(1, ordering: .relaxed) }
    do {
        if let verify {
            // The id goes into the payload too, so that every payload differs (the check compares payloads).
            let id = sender.client.newMessageID()
            let idBytes = Data(id.utf8).prefix(payload.count - 8)
            payload.replaceSubrange(8..<8 + idBytes.count, with: idBytes)
            let ack = try await sendUntilAcknowledged(payload, id: id, to: sender.conversation, with: sender.client)
            verify.record(conversation: sender.conversation, seq: ack.seq, payload: payload)
        } else {
            _ = try await sender.client.send(payload, to: sender.conversation)
        }
        let acked = monotonicNanoseconds()
        counters.totalAcks.add(1, ordering: .relaxed)
        counters.acknowledged(sent: intended, acked: acked)
    } catch {
        counters.failed(error)
    }
}

/// Prints one progress line per second on standard error until the measured window ends.
func reportProgress(_ counters: RunCounters) -> Task<Void, Never> {
    let interactive = isatty(STDERR_FILENO) != 0
    return Task {
        var lastAcks = 0
        var lastDeliveries = 0
        var second = 0
        while !Task.isCancelled && !counters.finished {
            try? await Task.sleep(nanoseconds: 1_000_000_000)
            second += 1
            let acks = counters.totalAcks.load(ordering: .relaxed)
            let deliveries = counters.totalDeliveries.load(ordering: .relaxed)
            let phase = monotonicNanoseconds() < counters.window.start ? "warm-up" : "measuring"
            let worstAck = counters.worstAck.exchange(0, ordering: .relaxed)
            let worstDelivery = counters.worstDelivery.exchange(0, ordering: .relaxed)
            // On a terminal the line rewrites itself; in a log, one line per second.
            let line =
                (interactive ? "\r" : "")
                + "[\(second) s, \(phase)] acks/s \(acks - lastAcks)  deliveries/s \(deliveries - lastDeliveries)  "
                + "errors \(counters.errors.load(ordering: .relaxed))  max ms ack \(milliseconds(worstAck)) "
                + "delivery \(milliseconds(worstDelivery))" + (interactive ? "   " : "\n")
            FileHandle.standardError.write(Data(line.utf8))
            lastAcks = acks
            lastDeliveries = deliveries
        }
        if interactive { FileHandle.standardError.write(Data("\n".utf8)) }
    }
}

/// Nanoseconds as milliseconds with one decimal, for the progress line.
private func milliseconds(_ nanoseconds: UInt64) -> String {
    String(format: "%.1f", Double(nanoseconds) / 1e6)
}

/// A counter shared by tasks (sends in flight, the next message to send).
final class InFlight: Sendable {
    let count = Atomic<Int>(0)
}
