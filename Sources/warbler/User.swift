import ArgumentParser
import Logging
import WarblerChat
import WarblerServer
import WarblerWire

#if canImport(Glibc)
import Glibc
#endif

struct User: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Manage accounts.", subcommands: [Add.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create accounts in a node's data (the node must be stopped).",
            discussion: """
                The password is read from standard input (one line), or prompted for on a terminal. Several names \
                create several accounts with that password (for test and benchmark fleets).
                """
        )

        @Argument(help: "The user name (letters, digits, '.', '_', '-'); it never changes.") var names: [String]
        @Option(help: "owner, admin, auditor, member, guest or bot.") var role = "member"
        @Option(help: "Data directory.") var data = "./data"

        func run() async throws {
            let roles: [String: Warbler_Chat_V1_Role] = [
                "owner": .owner, "admin": .admin, "auditor": .auditor, "member": .member, "guest": .guest, "bot": .bot,
            ]
            guard let chosen = roles[role] else { throw ValidationError("unknown role '\(role)'") }
            guard !names.isEmpty else { throw ValidationError("give at least one user name") }
            let password = try readPassword()
            var logger = Logger(label: "warbler")
            logger.logLevel = .warning
            var configuration = NodeConfiguration()
            configuration.dataDirectory = data
            let node: ChatNode
            do {
                node = try ChatNode(configuration: configuration, logger: logger)
            } catch {
                throw CommandFailure("cannot open \(data) (is the node running? stop it first): \(error)")
            }
            defer { node.stop() }
            do {
                try await node.start(listen: false)
                for name in names {
                    let account = try await node.createAccount(name: name, password: password, role: chosen)
                    print("created user \(account.name) (\(role))")
                }
            } catch let error as ChatError {
                throw CommandFailure(error.message)
            }
        }

        private func readPassword() throws -> String {
            if isatty(STDIN_FILENO) != 0 {
                guard
                    let first = getpass("Password for \(names.joined(separator: ", ")): ").map({ String(cString: $0) }),
                    let second = getpass("Repeat: ").map({ String(cString: $0) })
                else { throw ValidationError("no password given") }
                guard first == second else { throw ValidationError("the passwords differ") }
                return first
            }
            guard let line = readLine(strippingNewline: true), !line.isEmpty else {
                throw ValidationError("no password on standard input")
            }
            return line
        }
    }
}
