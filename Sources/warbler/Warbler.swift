import ArgumentParser

/// `warbler`: run a node, manage its users, chat.
@main
struct Warbler: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warbler",
        abstract: "Warbler — a self-hosted, Raft-replicated chat message broker.",
        subcommands: [Serve.self, Cluster.self, User.self, Chat.self, Cert.self]
    )
}

/// A failure to report as `Error: <message>` without the usage text (which is for mistyped commands).
struct CommandFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
