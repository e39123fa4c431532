import WarblerWire

/// How a node runs. Every field has a default; `validate()` names the first wrong one.
public struct NodeConfiguration: Sendable, Hashable {
    /// Where the node keeps its RocksDB database.
    public var dataDirectory = "./data"
    /// Network settings.
    public var network = Network()
    /// Protocol limits announced to clients.
    public var limits = ProtocolLimits()
    /// Login and session rules.
    public var security = Security()
    /// This node's id in its Raft groups (a single node is node 1 of a one-voter cluster). Fixed at first
    /// start; afterwards the id stored in the data directory wins.
    public var nodeID: UInt64 = 1
    /// How the node finds and talks to the rest of its cluster.
    public var cluster = Cluster()

    public struct Cluster: Sendable, Hashable {
        /// The address the peer listener binds to (nil: the client host).
        public var peerHost: String?
        /// Peer (Raft) port, mutual TLS.
        public var peerPort = 7500
        /// The host other nodes and clients reach this node at (nil: the client host).
        public var advertiseHost: String?
        /// The node's region label; replicas of a partition spread over regions.
        public var region = ""
        /// A member's peer address (`HOST:PORT`) to join at first start. Without it, a node with an empty data
        /// directory initialises a new cluster with itself as its only member.
        public var join: String?
        /// Where the node's certificate, key and the cluster CA certificate are (nil: `<data>/certs`).
        public var certificateDirectory: String?
        /// Partitions of a new cluster (fixed for its lifetime).
        public var partitionCount: UInt32 = 64
        /// Replicas per partition of a new cluster.
        public var replicationFactor: UInt32 = 3
        /// A group's log drops its applied entries once this many follow its start (the stored state keeps
        /// their effects); members further behind catch up from a snapshot of the state, made when needed.
        public var compactionEntries: UInt64 = 20_000
        public init() {}
    }

    public struct Network: Sendable, Hashable {
        /// The address client listeners bind to. Loopback by default: exposing a node is a decision.
        public var host = "127.0.0.1"
        /// Client TCP port.
        public var clientPort = 7400
        /// WebSocket port (`ws://host:port/v1`).
        public var webSocketPort = 7401
        /// Client connections (TCP and WebSocket together) held at once; nil: as many as the open-file limit
        /// leaves once storage and the node's own files have their share (``OpenFileBudget``).
        public var maxConnections: Int?
        public init() {}
    }

    public struct Security: Sendable, Hashable {
        /// How long a session token stays valid, in seconds.
        public var sessionLifetimeSeconds = 12 * 3600
        /// Failed logins for one name before it is locked out.
        public var maxFailedLogins = 5
        /// How long a lock-out lasts, in seconds.
        public var lockoutSeconds = 300
        /// scrypt cost (N = 2^costExponent); 15 costs about 32 MiB and tens of milliseconds per hash.
        public var scryptCostExponent = 15
        /// A connection that has not logged in this many seconds after it opened (or logged out) is closed, so
        /// that connections that never log in cannot hold the node's places for clients.
        public var loginTimeoutSeconds = 30
        /// Failed password logins a source address (IPv6: its /64) may make per minute, and at once; beyond them
        /// its password logins are refused with `node.rate_limited` before any hashing. 0: no limit.
        public var failedLoginsPerAddressPerMinute = 30
        public init() {}
    }

    /// Defaults: data in `./data`, clients on 127.0.0.1:7400, peers on 7500.
    public init() {}

    /// Where this node's certificates are.
    public var certificateDirectory: String { cluster.certificateDirectory ?? dataDirectory + "/certs" }

    /// The host others reach this node at.
    public var advertisedHost: String { cluster.advertiseHost ?? network.host }

    /// Checks every field.
    public func validate() throws(WireError) {
        if dataDirectory.isEmpty { throw WireError(.invalidArgument, "dataDirectory must not be empty") }
        if !(0...65535).contains(network.clientPort) {
            throw WireError(.invalidArgument, "network.clientPort must be 0...65535, got \(network.clientPort)")
        }
        if !(0...65535).contains(network.webSocketPort) {
            throw WireError(.invalidArgument, "network.webSocketPort must be 0...65535, got \(network.webSocketPort)")
        }
        if network.clientPort != 0 && network.clientPort == network.webSocketPort {
            throw WireError(.invalidArgument, "network.clientPort and network.webSocketPort must differ")
        }
        if network.host.isEmpty { throw WireError(.invalidArgument, "network.host must not be empty") }
        if let connections = network.maxConnections, connections < 1 {
            throw WireError(.invalidArgument, "network.maxConnections must be positive, got \(connections)")
        }
        if security.sessionLifetimeSeconds < 60 {
            throw WireError(.invalidArgument, "security.sessionLifetimeSeconds must be at least 60")
        }
        if security.maxFailedLogins < 1 {
            throw WireError(.invalidArgument, "security.maxFailedLogins must be positive")
        }
        if !(0...1_000_000).contains(security.failedLoginsPerAddressPerMinute) {
            throw WireError(.invalidArgument, "security.failedLoginsPerAddressPerMinute must be 0...1000000")
        }
        if !(1...3600).contains(security.loginTimeoutSeconds) {
            throw WireError(.invalidArgument, "security.loginTimeoutSeconds must be 1...3600")
        }
        if !(10...20).contains(security.scryptCostExponent) {
            throw WireError(.invalidArgument, "security.scryptCostExponent must be 10...20")
        }
        if nodeID == 0 { throw WireError(.invalidArgument, "nodeID must not be 0") }
        if !(0...65535).contains(cluster.peerPort) {
            throw WireError(.invalidArgument, "cluster.peerPort must be 0...65535, got \(cluster.peerPort)")
        }
        if !(1...4096).contains(cluster.partitionCount) {
            throw WireError(.invalidArgument, "cluster.partitionCount must be 1...4096")
        }
        if !(1...7).contains(cluster.replicationFactor) {
            throw WireError(.invalidArgument, "cluster.replicationFactor must be 1...7")
        }
        if cluster.compactionEntries < 10 {
            throw WireError(.invalidArgument, "cluster.compactionEntries must be at least 10")
        }
        if let join = cluster.join, !join.contains(":") {
            throw WireError(.invalidArgument, "cluster.join must be HOST:PORT, got \(join)")
        }
        try limits.validate()
    }
}
