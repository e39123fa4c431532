/// One parsed scenario line: `name positional... key=value key=(a b c)` and bare `(a b)` groups.
struct Command {
    var name: String
    var positional: [String] = []
    var options: [String: String] = [:]
    var lists: [String: [String]] = [:]
    var groups: [[String]] = []

    init(parsing line: String) throws {
        var tokens: [String] = []
        var current = ""
        var depth = 0
        for character in line {
            if character == "(" { depth += 1 }
            if character == ")" { depth -= 1 }
            if character == " " && depth == 0 {
                if !current.isEmpty { tokens.append(current) }
                current = ""
            } else {
                current.append(character)
            }
        }
        if !current.isEmpty { tokens.append(current) }
        guard let first = tokens.first else { throw ScenarioError("empty command") }
        name = first
        for token in tokens.dropFirst() {
            if token.hasPrefix("(") {
                groups.append(Command.items(token))
            } else if let equals = token.firstIndex(of: "=") {
                let key = String(token[..<equals])
                let value = String(token[token.index(after: equals)...])
                if value.hasPrefix("(") { lists[key] = Command.items(value) } else { options[key] = value }
            } else {
                positional.append(token)
            }
        }
    }

    private static func items(_ token: String) -> [String] {
        token.dropFirst().dropLast().split(separator: " ").map(String.init)
    }

    func int(_ position: Int) throws -> Int {
        guard position < positional.count else { throw ScenarioError("\(name): missing argument \(position + 1)") }
        return try parseInt(positional[position])
    }

    func parseInt(_ text: String) throws -> Int {
        guard let value = Int(text) else { throw ScenarioError("\(name): \(text) is not a number") }
        return value
    }

    /// All positional arguments as node ids.
    func ids() throws -> [Int] { try positional.map(parseInt) }

    func option(_ key: String) -> String? { options[key] }

    func bool(_ key: String, default value: Bool) -> Bool {
        guard let text = options[key] else { return value }
        return text == "true"
    }

    func list(_ key: String) throws -> [Int] { try (lists[key] ?? options[key].map { [$0] } ?? []).map(parseInt) }
}
