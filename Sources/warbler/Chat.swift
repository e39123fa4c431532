import ArgumentParser
import WarblerClient

struct Chat: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Chat interactively through a node.",
        discussion: "The password is asked for on the terminal (or read as the first line of standard input)."
    )

    @Option(
        help:
            "HOST:PORT of a node, or of several nodes of one cluster separated by commas (tried in turn, and on failover)."
    )
    var server = "127.0.0.1:7400"
    @Option(help: "Your user name.") var user: String

    func run() async throws {
        let nodes = try server.split(separator: ",").map { address -> WarblerClient.Configuration.Node in
            let parts = address.split(separator: ":")
            guard parts.count == 2, let port = Int(parts[1]) else {
                throw ValidationError("--server must be HOST:PORT[,HOST:PORT…], got \(server)")
            }
            return .init(host: String(parts[0]), port: port)
        }
        guard !nodes.isEmpty else { throw ValidationError("--server must name a node") }
        let terminal = Terminal()
        guard let password = terminal.readSecret(prompt: "Password for \(user): ") else {
            throw CommandFailure("no password given")
        }
        let client = WarblerClient(configuration: .init(nodes: nodes))
        do {
            let welcome = try await client.connect()
            try await client.login(user: user, password: password)
            terminal.write("Connected to node \(welcome.nodeID) as \(user). Ctrl-C or /quit to leave.\n")
        } catch {
            throw CommandFailure("cannot log in to \(server): \(error)")
        }
        await ChatApp(client: client, user: user, terminal: terminal).run()
        await client.close()
    }
}
