import ArgumentParser

struct Chat: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Chat interactively through a node.")

    @Option(help: "HOST:PORT of a node.") var server = "127.0.0.1:7400"
    @Option(help: "Your user name.") var user: String

    func run() async throws {
        throw ValidationError("the interactive client is not available yet")
    }
}
