import Foundation

/// Everything one run measured: printed as a table, or as JSON with `--json`.
struct BenchReport: Codable, Sendable {
    var scenario: String
    var date: String
    var nodes: Int
    var load: String
    var seconds: Double
    var payloadBytes: Int
    var seed: UInt64
    var clientConnections: Int
    var sendsPerSecond: Double
    var acksPerSecond: Double
    var deliveriesPerSecond: Double
    var readsPerSecond: Double
    var receiptsPerSecond: Double
    var errors: Int
    var firstError: String?
    var ack: LatencySummary
    var delivery: LatencySummary
    /// Send → the last of its recipients (in `pairs` the same as `delivery`).
    var deliveryToAll: LatencySummary
    /// Measured messages that some, not all, of their recipients had received when the run ended.
    var partlyDelivered: Int
    var read: LatencySummary
    var servers: [ProcessUsage]
    /// The bench's own process: it shares the machine with local nodes.
    var client: ProcessUsage?
    var extras: ScenarioExtras

    enum CodingKeys: String, CodingKey {
        case scenario, date, nodes, load, seconds, seed, errors, ack, delivery, read, servers, client, extras
        case payloadBytes = "payload_bytes"
        case clientConnections = "client_connections"
        case sendsPerSecond = "sends_per_second"
        case acksPerSecond = "acks_per_second"
        case deliveriesPerSecond = "deliveries_per_second"
        case readsPerSecond = "reads_per_second"
        case receiptsPerSecond = "receipts_per_second"
        case firstError = "first_error"
        case deliveryToAll = "delivery_to_all"
        case partlyDelivered = "partly_delivered"
    }

    /// Whether some messages had several recipients, so that the latency until all had it is a figure of its
    /// own.
    var fansOut: Bool { deliveryToAll.count != delivery.count || partlyDelivered > 0 }

    var json: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return String(decoding: (try? encoder.encode(self)) ?? Data(), as: UTF8.self)
    }

    /// The readable table.
    var table: String {
        var lines: [String] = []
        lines.append(
            "\(scenario) · \(nodes) node(s) · \(load) · \(payloadBytes)-byte payloads · "
                + "\(Self.number(seconds)) s measured · seed \(seed) · \(clientConnections) client connections"
        )
        lines.append("")
        lines.append(Self.row(["", "per second"], widths: [14, 12]))
        lines.append(Self.row(["sends", Self.number(sendsPerSecond)], widths: [14, 12]))
        lines.append(Self.row(["acks", Self.number(acksPerSecond)], widths: [14, 12]))
        lines.append(Self.row(["deliveries", Self.number(deliveriesPerSecond)], widths: [14, 12]))
        if readsPerSecond > 0 {
            lines.append(Self.row(["history reads", Self.number(readsPerSecond)], widths: [14, 12]))
        }
        if receiptsPerSecond > 0 {
            lines.append(Self.row(["receipts", Self.number(receiptsPerSecond)], widths: [14, 12]))
        }
        lines.append(Self.row(["errors", "\(errors)"], widths: [14, 12]))
        if let firstError { lines.append("first error: \(firstError)") }
        lines.append("")
        let widths = [14, 10, 10, 10, 10, 10, 10]
        lines.append(Self.row(["latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"], widths: widths))
        let rows = [("ack", ack), ("delivery", delivery)] + (fansOut ? [("delivery, all", deliveryToAll)] : [])
        for (name, summary) in rows + [("history read", read)] where summary.count > 0 {
            lines.append(
                Self.row(
                    [name, "\(summary.count)"]
                        + [summary.p50, summary.p90, summary.p99, summary.p999, summary.max].map {
                            String(format: "%.3f", Double($0) / 1000)
                        },
                    widths: widths
                )
            )
        }
        if partlyDelivered > 0 {
            lines.append("\(partlyDelivered) messages had not reached all of their recipients when the run ended")
        }
        if !servers.isEmpty || client != nil {
            lines.append("")
            lines.append(Self.row(["process", "pid", "cpu (cores)", "rss (MiB)"], widths: [14, 10, 12, 12]))
            let processes = servers.map { ("server", $0) } + (client.map { [("bench", $0)] } ?? [])
            for (role, usage) in processes {
                lines.append(
                    Self.row(
                        [
                            role, "\(usage.pid)", String(format: "%.2f", usage.cpuCores),
                            String(format: "%.1f", usage.rssMiB),
                        ],
                        widths: [14, 10, 12, 12]
                    )
                )
            }
        }
        if let connections = extras.connections {
            lines.append("")
            lines.append(
                "idle connections: \(connections), connect rate \(Self.number(extras.connectsPerSecond ?? 0))/s"
            )
            if let bytes = extras.serverBytesPerConnection {
                lines.append("server memory per connection: \(String(format: "%.1f", bytes / 1024)) KiB")
            }
        }
        if let led = extras.groupsLed {
            lines.append("")
            lines.append(
                "groups led when measuring started: "
                    + led.enumerated().map { "node \($0.offset + 1) \($0.element)" }.joined(separator: ", ")
            )
        }
        for (title, placed) in [
            ("pairs placed (sender's node → partition leader → recipient's node)", extras.pairNodes),
            ("groups placed (senders' node → partition leader)", extras.groupNodes),
        ] {
            guard let placed, !placed.isEmpty else { continue }
            let paths = Dictionary(grouping: placed) { $0.map(String.init).joined(separator: " → ") }.mapValues(\.count)
            lines.append("\(title): " + paths.keys.sorted().map { "\($0) ×\(paths[$0]!)" }.joined(separator: ", "))
        }
        if let flood = extras.loginFlood {
            lines.append("")
            lines.append(
                "login flood: \(flood.connections) connections from \(flood.source), "
                    + "\(Self.number(flood.answeredPerSecond)) answers/s over \(String(format: "%.1f", flood.seconds)) s: "
                    + "\(flood.checked) checked, \(flood.refused) refused unchecked, \(flood.other) other"
            )
        }
        if let restart = extras.restart {
            let format = { (seconds: Double) in String(format: "%.2f s", seconds) }
            lines.append("")
            lines.append(
                "restart: \(restart.clients) clients; the node listened again after \(format(restart.nodeStartSeconds)); "
                    + "back (from the kill): p50 \(format(restart.backP50Seconds)), p99 \(format(restart.backP99Seconds)), "
                    + "all \(format(restart.allBackSeconds)); \(restart.resumed) resumed their session, "
                    + "\(restart.loggedInAgain) logged in again, \(restart.notBack) not back"
            )
        }
        if let backlog = extras.backlog, let seconds = extras.syncSeconds {
            lines.append("")
            lines.append(
                "sync: backlog of \(backlog) messages in \(String(format: "%.3f", seconds)) s "
                    + "(\(Self.number(extras.syncedPerSecond ?? 0)) messages/s)"
            )
        }
        return lines.joined(separator: "\n")
    }

    static func number(_ value: Double) -> String {
        let formatter = NumberFormatter()
        formatter.numberStyle = .decimal
        formatter.maximumFractionDigits = value < 100 ? 1 : 0
        return formatter.string(from: NSNumber(value: value)) ?? "\(value)"
    }

    static func row(_ cells: [String], widths: [Int]) -> String {
        zip(cells, widths).enumerated().map { index, pair in
            let (cell, width) = pair
            let padding = String(repeating: " ", count: max(0, width - cell.count))
            return index == 0 ? cell + padding : padding + cell
        }.joined(separator: " ")
    }

    /// A latency-by-percentile plot (HdrHistogram style: the x axis counts nines) of the ack and delivery
    /// latencies (and, when messages fan out, until all recipients have them), as a standalone SVG.
    var svg: String {
        let width = 760.0
        let height = 440.0
        let left = 70.0
        let right = 20.0
        let top = 50.0
        let bottom = 60.0
        let series = [
            ("ack", ack, "#1f77b4"), ("delivery", delivery, "#ff7f0e"),
            ("delivery to all recipients", fansOut ? deliveryToAll : LatencySummary(), "#d62728"),
            ("history read", read, "#2ca02c"),
        ].filter { $0.1.count > 0 }
        let maxMicroseconds = series.flatMap { $0.1.curve.map { $0[1] } }.max() ?? 1
        let maxMilliseconds = Self.niceCeiling(maxMicroseconds / 1000)
        let maxNines = 5.0
        func x(_ percentile: Double) -> Double {
            let nines = percentile >= 100 ? maxNines : min(maxNines, -log10(1 - percentile / 100))
            return left + (width - left - right) * nines / maxNines
        }
        func y(_ microseconds: Double) -> Double {
            top + (height - top - bottom) * (1 - min(microseconds / 1000 / maxMilliseconds, 1))
        }
        var svg = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" \
            font-family="sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(left)" y="22" font-size="14">warbler-bench \(scenario): latency by percentile</text>
            <text x="\(left)" y="38" fill="#555">\(nodes) node(s), \(load), \(payloadBytes)-byte payloads, \
            \(Int(acksPerSecond)) acks/s, \(date)</text>

            """
        for (index, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"].enumerated() {
            let position = left + (width - left - right) * Double(index) / maxNines
            svg +=
                "<line x1=\"\(position)\" y1=\"\(top)\" x2=\"\(position)\" y2=\"\(height - bottom)\" stroke=\"#ddd\"/>\n"
            svg += "<text x=\"\(position)\" y=\"\(height - bottom + 16)\" text-anchor=\"middle\">\(label)</text>\n"
        }
        for step in 0...5 {
            let value = maxMilliseconds * Double(step) / 5
            let position = y(value * 1000)
            svg +=
                "<line x1=\"\(left)\" y1=\"\(position)\" x2=\"\(width - right)\" y2=\"\(position)\" stroke=\"#ddd\"/>\n"
            svg += "<text x=\"\(left - 6)\" y=\"\(position + 4)\" text-anchor=\"end\">\(Self.trim(value))</text>\n"
        }
        svg +=
            "<text x=\"\((left + width - right) / 2)\" y=\"\(height - 20)\" text-anchor=\"middle\">percentile</text>\n"
        svg +=
            "<text x=\"18\" y=\"\((top + height - bottom) / 2)\" transform=\"rotate(-90 18 \((top + height - bottom) / 2))\" "
        svg += "text-anchor=\"middle\">latency (ms)</text>\n"
        for (index, (name, summary, color)) in series.enumerated() {
            let points = summary.curve.map { "\(String(format: "%.1f", x($0[0]))),\(String(format: "%.1f", y($0[1])))" }
            svg +=
                "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\" points=\"\(points.joined(separator: " "))\"/>\n"
            let legendY = top + 16 + Double(index) * 16
            svg +=
                "<line x1=\"\(left + 12)\" y1=\"\(legendY - 4)\" x2=\"\(left + 36)\" y2=\"\(legendY - 4)\" stroke=\"\(color)\" stroke-width=\"2\"/>\n"
            svg +=
                "<text x=\"\(left + 42)\" y=\"\(legendY)\">\(name) (p99 \(Self.trim(Double(summary.p99) / 1000)) ms)</text>\n"
        }
        svg += "</svg>\n"
        return svg
    }

    static func niceCeiling(_ value: Double) -> Double {
        guard value > 0 else { return 1 }
        let magnitude = pow(10, floor(log10(value)))
        for step in [1.0, 2.0, 2.5, 5.0, 10.0] where step * magnitude >= value { return step * magnitude }
        return 10 * magnitude
    }

    static func trim(_ value: Double) -> String {
        value >= 10
            ? String(format: "%.0f", value) : value >= 1 ? String(format: "%.1f", value) : String(format: "%.2f", value)
    }
}
