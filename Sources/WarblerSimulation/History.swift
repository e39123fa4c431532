import Foundation

/// One line of a client history: an operation's invocation or its outcome.
///
/// Serialized as JSON Lines: `{"process":P,"type":"invoke"|"ok"|"fail"|"info","f":"append"|"read","value":V,
/// "index":I}`. An append's value is a unique integer; an ok read's value is the whole list of appended values
/// it saw, in log order; `index` is the log index the outcome refers to, or null.
public struct HistoryEvent: Sendable, Hashable, Codable {
    /// Whether the event starts an operation or reports how it ended.
    public enum Kind: String, Sendable, Codable {
        /// The operation began.
        case invoke
        /// It took effect.
        case ok
        /// It definitely did not take effect.
        case fail
        /// Its outcome is unknown (it may or may not have taken effect).
        case info
    }

    /// The operation.
    public enum Function: String, Sendable, Codable {
        case append
        case read
    }

    /// An operation's value: one integer for appends, a list for ok reads, nothing for read invocations.
    public enum Value: Sendable, Hashable, Codable {
        case none
        case single(Int)
        case list([Int])

        public init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if container.decodeNil() {
                self = .none
            } else if let value = try? container.decode(Int.self) {
                self = .single(value)
            } else {
                self = .list(try container.decode([Int].self))
            }
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            switch self {
            case .none: try container.encodeNil()
            case .single(let value): try container.encode(value)
            case .list(let values): try container.encode(values)
            }
        }
    }

    public var process: Int
    public var type: Kind
    public var f: Function
    public var value: Value
    public var index: UInt64?

    /// Creates an event.
    public init(process: Int, type: Kind, f: Function, value: Value, index: UInt64? = nil) {
        self.process = process
        self.type = type
        self.f = f
        self.value = value
        self.index = index
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(process, forKey: .process)
        try container.encode(type, forKey: .type)
        try container.encode(f, forKey: .f)
        try container.encode(value, forKey: .value)
        // Always present, null when unknown, so every line has the same keys.
        try container.encode(index, forKey: .index)
    }

    private enum CodingKeys: String, CodingKey { case process, type, f, value, index }
}

/// Reads and writes histories as JSON Lines.
public enum HistoryFile {
    /// One JSON object per event, keys in a fixed order, newline-terminated.
    public static func encode(_ events: [HistoryEvent]) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var text = ""
        for event in events {
            // Encoding these plain values cannot fail.
            text += String(decoding: try! encoder.encode(event), as: UTF8.self) + "\n"
        }
        return text
    }

    /// Parses JSON Lines; blank lines are skipped.
    public static func decode(_ text: String) throws -> [HistoryEvent] {
        let decoder = JSONDecoder()
        var events: [HistoryEvent] = []
        for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated()
        where !line.trimmingCharacters(in: .whitespaces).isEmpty {
            do {
                events.append(try decoder.decode(HistoryEvent.self, from: Data(line.utf8)))
            } catch {
                throw HistoryViolation("line \(number + 1) is not a history event: \(error)")
            }
        }
        return events
    }
}

/// A way in which a history is not linearizable as an append-only log.
public struct HistoryViolation: Error, Sendable, Hashable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Checks a history of appends and reads against an append-only replicated log:
///
/// - every ok append appears, exactly once, in every ok read that began after the append completed;
/// - all ok reads are prefixes of one sequence, and a later read never sees less than an earlier completed one;
/// - no read contains a value that no client tried to append, or one whose append definitely failed.
public enum HistoryChecker {
    /// Returns every violation found (empty when the history is valid).
    public static func check(_ events: [HistoryEvent]) -> [HistoryViolation] {
        var violations: [HistoryViolation] = []
        var attempted: Set<Int> = []
        var failed: Set<Int> = []
        // Position in the history at which each append completed ok.
        var appendCompleted: [Int: Int] = [:]
        // The read invocation position per process (a process has one operation outstanding at a time).
        var pendingInvoke: [Int: (position: Int, f: HistoryEvent.Function, value: HistoryEvent.Value)] = [:]
        var reads: [(invoked: Int, completed: Int, values: [Int])] = []

        for (position, event) in events.enumerated() {
            switch event.type {
            case .invoke:
                if pendingInvoke[event.process] != nil {
                    violations.append(HistoryViolation("process \(event.process) invoked twice without an outcome"))
                }
                pendingInvoke[event.process] = (position, event.f, event.value)
                if event.f == .append, case .single(let value) = event.value {
                    if attempted.contains(value) {
                        violations.append(HistoryViolation("value \(value) appended twice by clients"))
                    }
                    attempted.insert(value)
                }
            case .ok, .fail, .info:
                guard let invoke = pendingInvoke.removeValue(forKey: event.process), invoke.f == event.f else {
                    violations.append(
                        HistoryViolation("process \(event.process): \(event.type.rawValue) without invoke")
                    )
                    continue
                }
                switch (event.f, event.type, event.value) {
                case (.append, .ok, .single(let value)):
                    appendCompleted[value] = position
                case (.append, .fail, .single(let value)):
                    failed.insert(value)
                case (.read, .ok, .list(let values)):
                    reads.append((invoke.position, position, values))
                case (.read, .ok, _):
                    violations.append(HistoryViolation("process \(event.process): ok read without a list value"))
                default:
                    break
                }
            }
        }

        var longest: [Int] = []
        for read in reads {
            var seen: Set<Int> = []
            for value in read.values {
                if !seen.insert(value).inserted {
                    violations.append(HistoryViolation("read at \(read.completed) holds \(value) twice"))
                }
                if !attempted.contains(value) {
                    violations.append(HistoryViolation("read at \(read.completed) holds \(value), never appended"))
                }
                if failed.contains(value) {
                    violations.append(HistoryViolation("read at \(read.completed) holds \(value), whose append failed"))
                }
            }
            for (value, completed) in appendCompleted where completed < read.invoked && !seen.contains(value) {
                violations.append(
                    HistoryViolation("read invoked at \(read.invoked) misses \(value), acknowledged at \(completed)")
                )
            }
            let shorter = min(longest.count, read.values.count)
            if longest[..<shorter] != read.values[..<shorter] {
                violations.append(HistoryViolation("read at \(read.completed) diverges from an earlier read"))
            }
            if read.values.count > longest.count { longest = read.values }
        }
        // Real-time order between reads: a read that began after another completed sees at least as much.
        let byCompletion = reads.sorted { $0.completed < $1.completed }
        var maxCompleted: [(completed: Int, count: Int)] = []
        var best = 0
        for read in byCompletion {
            best = max(best, read.values.count)
            maxCompleted.append((read.completed, best))
        }
        for read in reads {
            // The most any read that completed before this one began had seen.
            let earlier = maxCompleted.last { $0.completed < read.invoked }?.count ?? 0
            if read.values.count < earlier {
                violations.append(
                    HistoryViolation(
                        "read at \(read.completed) saw \(read.values.count) values, fewer than \(earlier) seen earlier"
                    )
                )
            }
        }
        return violations
    }
}
