import Foundation
import Testing

/// Runs every `testdata/*.txt` scenario and compares each command's output with the golden text after `----`.
///
/// Set `WARBLER_REWRITE=1` to rewrite the golden output instead (then review the diff before committing).
struct ScenarioTests {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
        "testdata"
    )

    static var files: [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter { $0.hasSuffix(".txt") }.sorted()
    }

    @Test func thereAreEnoughScenarios() {
        #expect(Self.files.count >= 25)
    }

    @Test(arguments: files)
    func scenario(_ name: String) throws {
        let url = Self.directory.appendingPathComponent(name)
        let text = try String(contentsOf: url, encoding: .utf8)
        let rewrite = ProcessInfo.processInfo.environment["WARBLER_REWRITE"] == "1"
        let env = InteractionEnv()
        var rewritten: [String] = []
        var lines = text.components(separatedBy: "\n")[...]
        while let line = lines.popFirst() {
            if line.isEmpty || line.hasPrefix("#") {
                rewritten.append(line)
                continue
            }
            // A command, then "----", then expected output up to a blank line.
            guard lines.popFirst() == "----" else {
                Issue.record("\(name): command '\(line)' is not followed by ----")
                return
            }
            var expected: [String] = []
            while let next = lines.first, !next.isEmpty {
                expected.append(next)
                lines.removeFirst()
            }
            let actual = try env.run(line)
            rewritten.append(line)
            rewritten.append("----")
            if !actual.isEmpty { rewritten.append(actual) }
            #expect(!actual.contains("INVARIANT VIOLATED"), "\(name): \(line)")
            if !rewrite {
                #expect(actual == expected.joined(separator: "\n"), "\(name): output of '\(line)' differs")
            }
        }
        if rewrite {
            var result = rewritten.joined(separator: "\n")
            if !result.hasSuffix("\n") { result += "\n" }
            try result.write(to: url, atomically: true, encoding: .utf8)
        }
    }
}
