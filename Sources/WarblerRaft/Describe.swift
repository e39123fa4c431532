// Text forms used by logs, scenario golden files and the simulator (etcd-io/raft's spelling).

extension Entry: CustomStringConvertible {
    /// `term/index kind payload`, for example `1/3 EntryNormal "hello"` or `2/7 EntryConfChange v4`.
    public var description: String {
        switch kind {
        case .normal:
            return "\(term)/\(index) EntryNormal \(quoted(data))"
        case .confChange:
            let change = (try? ConfChange(decoding: data)).map(\.description) ?? "<corrupt>"
            return "\(term)/\(index) EntryConfChange \(change)"
        }
    }
}

extension ConfChange: CustomStringConvertible {
    /// `v4` (add voter 4), `l4` (add learner 4) or `r4` (remove 4).
    public var description: String {
        switch kind {
        case .addNode: "v\(nodeID)"
        case .addLearner: "l\(nodeID)"
        case .removeNode: "r\(nodeID)"
        }
    }
}

extension ConfState: CustomStringConvertible {
    public var description: String {
        "Voters:[\(voters.sorted().map(String.init).joined(separator: " "))] "
            + "Learners:[\(learners.sorted().map(String.init).joined(separator: " "))]"
    }
}

extension HardState: CustomStringConvertible {
    public var description: String { "Term:\(term) Vote:\(vote) Commit:\(commit)" }
}

extension Message: CustomStringConvertible {
    /// One line: `1->2 MsgApp Term:1 Log:1/3 Commit:3 Entries:[1/4 EntryNormal "x"]`.
    public var description: String {
        var text = "\(from)->\(to) \(type.name) Term:\(term) Log:\(logTerm)/\(index)"
        if reject { text += " Rejected (Hint: \(rejectHint))" }
        if commit != 0 { text += " Commit:\(commit)" }
        if !entries.isEmpty { text += " Entries:[\(entries.map(\.description).joined(separator: ", "))]" }
        if let snapshot {
            let meta = snapshot.metadata
            text += " Snapshot: Index:\(meta.index) Term:\(meta.term) ConfState:\(meta.confState)"
        }
        if !context.isEmpty { text += " Context:\(quoted(context))" }
        return text
    }
}

/// Bytes as a quoted string when printable, else as hex.
func quoted(_ bytes: [UInt8]) -> String {
    if bytes.allSatisfy({ $0 >= 0x20 && $0 < 0x7F && $0 != 0x22 }) {
        return "\"" + String(decoding: bytes, as: UTF8.self) + "\""
    }
    return "0x" + bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
}
