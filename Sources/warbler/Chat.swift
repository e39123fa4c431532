import ArgumentParser
import WarblerClient

struct Chat: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Chat interactively through a node.",
        discussion: "The password is asked for on the terminal (or read as the first line of standard input)."
    )

    @Option(help: "HOST:PORT of a node.") var server = "127.0.0.1:7400"
    @Option(help: "Your user name.") var user: String

    func run() async throws {
        let parts = server.split(separator: ":")
        guard parts.count == 2, let port = Int(parts[1]) else { throw ValidationError("--server must be HOST:PORT") }
        let terminal = Terminal()
        guard let password = terminal.readSecret(prompt: "Password for \(user): ") else {
            throw CommandFailure("no password given")
        }
        let client = WarblerClient(host: String(parts[0]), port: port)
        do {
            let welcome = try await client.connect()
            try await client.login(user: user, password: password)
            terminal.write("Connected to node \(welcome.nodeID) at \(server) as \(user). Ctrl-C or /quit to leave.\n")
        } catch {
            throw CommandFailure("cannot log in to \(server): \(error)")
        }
        await ChatApp(client: client, user: user, terminal: terminal).run()
        await client.close()
    }
}
