import Foundation
import Histogram
import Synchronization

/// Latencies in microseconds from many tasks, in an HdrHistogram (3 significant digits, up to 10 minutes).
final class LatencyRecorder: Sendable {
    private let histogram = Mutex(
        Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
    )

    func record(nanoseconds: UInt64) {
        let microseconds = max(nanoseconds / 1_000, 1)
        histogram.withLock { _ = $0.record(min(microseconds, 600_000_000)) }
    }

    /// p50/p90/p99/p99.9/max and the whole percentile curve (for the plot).
    var summary: LatencySummary {
        histogram.withLock { histogram in
            guard histogram.totalCount > 0 else { return LatencySummary() }
            // Percentiles 0, 90, 99, 99.9, … spaced evenly on the "number of nines" axis, as HdrHistogram plots.
            let curve = stride(from: 0.0, through: 5.0, by: 0.05).map { nines -> [Double] in
                let percentile = 100 * (1 - pow(10, -nines))
                return [percentile, Double(histogram.valueAtPercentile(percentile))]
            }
            return LatencySummary(
                count: Int(histogram.totalCount),
                p50: histogram.valueAtPercentile(50),
                p90: histogram.valueAtPercentile(90),
                p99: histogram.valueAtPercentile(99),
                p999: histogram.valueAtPercentile(99.9),
                max: histogram.max,
                curve: curve
            )
        }
    }
}

/// Latency percentiles in microseconds.
struct LatencySummary: Codable, Sendable {
    var count = 0
    var p50: UInt64 = 0
    var p90: UInt64 = 0
    var p99: UInt64 = 0
    var p999: UInt64 = 0
    var max: UInt64 = 0
    /// `[percentile, microseconds]` pairs (not in the JSON: the plot uses them).
    var curve: [[Double]] = []

    enum CodingKeys: String, CodingKey {
        case count
        case p50 = "p50_us"
        case p90 = "p90_us"
        case p99 = "p99_us"
        case p999 = "p99_9_us"
        case max = "max_us"
    }
}

/// What a run counts, shared by every worker; only events inside the measured window count.
final class RunCounters: Sendable {
    let sends = Atomic<Int>(0)
    let acks = Atomic<Int>(0)
    let deliveries = Atomic<Int>(0)
    let errors = Atomic<Int>(0)
    let reads = Atomic<Int>(0)
    let receipts = Atomic<Int>(0)
    /// Acks and deliveries since the start, warm-up included (the progress line).
    let totalAcks = Atomic<Int>(0)
    let totalDeliveries = Atomic<Int>(0)
    let ack = LatencyRecorder()
    let delivery = LatencyRecorder()
    /// The longest ack and delivery latency (nanoseconds) since the progress line last took them, warm-up
    /// included: a stall shows in the second it happened, not only in the run's percentiles.
    let worstAck = Atomic<UInt64>(0)
    let worstDelivery = Atomic<UInt64>(0)
    let read = LatencyRecorder()
    /// Send → the last of its recipients: when the whole conversation has the message.
    let deliveryToAll = LatencyRecorder()
    /// The measured window, in monotonic nanoseconds.
    let window: (start: UInt64, end: UInt64)
    private let firstError = Mutex<String?>(nil)
    /// Each conversation's recipients (every member but the sender, online), and which of its measured messages
    /// some of them still wait for; deliveries in conversations not named here count in `delivery` only.
    private let conversations: [String: WaitingRecipients]

    init(warmUpSeconds: Double, seconds: Double, recipients: [String: Int] = [:]) {
        let start = monotonicNanoseconds() + UInt64(warmUpSeconds * 1e9)
        window = (start, start + UInt64(seconds * 1e9))
        conversations = recipients.mapValues(WaitingRecipients.init(recipients:))
    }

    @inline(__always) func measured(_ time: UInt64) -> Bool { time >= window.start && time <= window.end }

    var finished: Bool { monotonicNanoseconds() >= window.end }

    func failed(_ error: any Error) {
        errors.add(1, ordering: .relaxed)
        firstError.withLock { if $0 == nil { $0 = "\(error)" } }
    }

    var firstErrorDescription: String? { firstError.withLock { $0 } }

    /// A send acknowledged at `acked`, intended (open loop) or issued (closed loop) at `sent`.
    @inline(__always) func acknowledged(sent: UInt64, acked: UInt64) {
        if acked > sent { _ = worstAck.max(acked - sent, ordering: .relaxed) }
        guard measured(sent) else { return }
        acks.add(1, ordering: .relaxed)
        if acked <= window.end { ack.record(nanoseconds: acked - sent) }
    }

    /// What counts the recipients of `conversation`'s messages (nil when the run does not know them): looked up
    /// once per conversation by each receiver, not once per delivery.
    func recipients(of conversation: String) -> WaitingRecipients? { conversations[conversation] }

    /// Message `seq` pushed to a recipient at `received`, stamped by its sender with `sent`; `waiting`, its
    /// conversation's recipients. The delivery that completes them also counts in ``deliveryToAll``.
    @inline(__always) func delivered(seq: UInt64, in waiting: WaitingRecipients?, sent: UInt64, received: UInt64) {
        if received > sent { _ = worstDelivery.max(received - sent, ordering: .relaxed) }
        guard measured(sent) else { return }
        deliveries.add(1, ordering: .relaxed)
        guard received >= sent else { return }
        delivery.record(nanoseconds: received - sent)
        guard let waiting, waiting.arrived(seq) else { return }
        deliveryToAll.record(nanoseconds: received - sent)
    }

    /// Measured messages that some, not all, of their recipients had received when the run ended.
    var incompleteDeliveries: Int { conversations.values.reduce(0) { $0 + $1.incomplete } }
}

/// One conversation's recipients still waiting for its messages, counted down by `seq` as deliveries arrive: a
/// ring of slots indexed by `seq` (recipients receive in `seq` order, so only recent messages are pending).
final class WaitingRecipients: Sendable {
    let recipients: Int
    /// A message whose slot is taken again while recipients still wait for it is given up and counted.
    private static let slots = 1 << 14
    private let ring: Mutex<(slots: [(seq: UInt64, left: Int)], givenUp: Int)>

    init(recipients: Int) {
        self.recipients = recipients
        // Conversations with one recipient need no slots: each delivery completes its message.
        ring = Mutex((recipients > 1 ? Array(repeating: (0, 0), count: Self.slots) : [], 0))
    }

    /// Counts one delivery of message `seq`; true for the one that completes its recipients.
    func arrived(_ seq: UInt64) -> Bool {
        guard recipients > 1 else { return true }
        return ring.withLock { ring in
            let index = Int(seq % UInt64(Self.slots))
            if ring.slots[index].seq != seq {
                if ring.slots[index].left > 0 { ring.givenUp += 1 }
                ring.slots[index] = (seq, recipients)
            }
            ring.slots[index].left -= 1
            return ring.slots[index].left == 0
        }
    }

    /// Messages some recipients still wait for, or that were given up.
    var incomplete: Int { ring.withLock { ring in ring.givenUp + ring.slots.reduce(0) { $0 + ($1.left > 0 ? 1 : 0) } } }
}

/// CPU and memory of local server processes, from /proc.
struct ProcessSample: Sendable {
    var pid: Int32
    var cpuTicks: UInt64
    var rssBytes: UInt64
    var at: UInt64

    static let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))

    init?(pid: Int32) {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        // Fields after "(comm)": state is field 3; utime and stime are fields 14 and 15.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = UInt64(fields[11]), let system = UInt64(fields[12]) else { return nil }
        self.pid = pid
        cpuTicks = user + system
        rssBytes = Self.residentBytes(pid) ?? 0
        at = monotonicNanoseconds()
    }

    static func residentBytes(_ pid: Int32) -> UInt64? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            if parts.count >= 2, let kib = UInt64(parts[1]) { return kib * 1024 }
        }
        return nil
    }
}

/// A process's CPU use (cores) between two samples, and its memory at the second.
struct ProcessUsage: Codable, Sendable {
    var pid: Int32
    var cpuCores: Double
    var rssMiB: Double

    init(from start: ProcessSample, to end: ProcessSample) {
        pid = end.pid
        let seconds = Double(end.at - start.at) / 1e9
        cpuCores = seconds > 0 ? Double(end.cpuTicks - start.cpuTicks) / ProcessSample.ticksPerSecond / seconds : 0
        rssMiB = Double(end.rssBytes) / 1_048_576
    }

    enum CodingKeys: String, CodingKey {
        case pid
        case cpuCores = "cpu_cores"
        case rssMiB = "rss_mib"
    }
}

/// Samples local server processes, and the bench itself, at the start and the end of the measured window.
final class UsageSampler: Sendable {
    /// The servers' processes, then the bench's own.
    let pids: [Int32]
    private let samples = Mutex<(start: [ProcessSample], end: [ProcessSample])>(([], []))
    private let task = Mutex<Task<Void, Never>?>(nil)

    init(serverPIDs: [Int32]) { pids = serverPIDs + [getpid()] }

    /// Samples at `start`, and at `end` (or when ``finish()`` is called, without one).
    func schedule(start: UInt64, end: UInt64?) {
        let pids = self.pids
        let task = Task {
            await Self.sleep(until: start)
            let first = pids.compactMap(ProcessSample.init(pid:))
            samples.withLock { $0.start = first }
            guard let end else { return }
            await Self.sleep(until: end)
            let last = pids.compactMap(ProcessSample.init(pid:))
            samples.withLock { $0.end = last }
        }
        self.task.withLock { $0 = task }
    }

    /// The servers' usage, and the bench's: on a shared machine the client's CPU is CPU the nodes did not get.
    func finish() async -> (servers: [ProcessUsage], client: ProcessUsage?) {
        await task.withLock { $0 }?.value
        let (start, end) = samples.withLock { samples in
            if samples.end.isEmpty { samples.end = pids.compactMap(ProcessSample.init(pid:)) }
            return samples
        }
        // By pid: a process that exited during the run has no second sample (it is left out, not paired with
        // another process's).
        let first = Dictionary(start.map { ($0.pid, $0) }, uniquingKeysWith: { a, _ in a })
        let usage = end.compactMap { last in first[last.pid].map { ProcessUsage(from: $0, to: last) } }
        let own = getpid()
        return (usage.filter { $0.pid != own }, usage.first { $0.pid == own })
    }

    private static func sleep(until time: UInt64) async {
        let now = monotonicNanoseconds()
        if time > now { try? await Task.sleep(nanoseconds: time - now) }
    }
}
