import ArgumentParser
import WarblerCluster

struct Cert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create the cluster CA and node certificates (mutual TLS between nodes).",
        subcommands: [InitCA.self, Issue.self]
    )

    struct InitCA: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "init-ca",
            abstract: "Create a new cluster CA (ca.pem, ca-key.pem). Keep ca-key.pem off the nodes if you can."
        )
        @Option(help: "Directory for the CA files.") var out = "./ca"

        func run() throws {
            try ClusterCertificates.initCA(in: out)
            print("created the cluster CA in \(out)")
        }
    }

    struct Issue: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue a node certificate (node.pem, node-key.pem, plus ca.pem) signed by the cluster CA."
        )
        @Option(help: "The node's id (1, 2, …).") var node: UInt64
        @Option(help: "Directory of the CA (ca.pem, ca-key.pem).") var ca = "./ca"
        @Option(help: "Output directory (the node's --certs, by default DATA/certs).") var out: String
        @Option(help: "A host name or IPv4 address the node is reached at (repeatable).") var host: [String] = []

        func run() throws {
            let hosts = Array(Set(["localhost", "127.0.0.1"] + host)).sorted()
            try ClusterCertificates.issue(node: node, caDirectory: ca, outputDirectory: out, hosts: hosts)
            print("issued the certificate of node \(node) in \(out)")
        }
    }
}
