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
    /// This node's id in its Raft groups (a single node is node 1 of a one-voter cluster).
    public var nodeID: UInt64 = 1

    public struct Network: Sendable, Hashable {
        /// The address client listeners bind to. Loopback by default: exposing a node is a decision.
        public var host = "127.0.0.1"
        /// Client TCP port.
        public var clientPort = 7400
        /// WebSocket port (`ws://host:port/v1`).
        public var webSocketPort = 7401
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
        public init() {}
    }

    /// Defaults: data in `./data`, clients on 127.0.0.1:7400.
    public init() {}

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
        if security.sessionLifetimeSeconds < 60 {
            throw WireError(.invalidArgument, "security.sessionLifetimeSeconds must be at least 60")
        }
        if security.maxFailedLogins < 1 {
            throw WireError(.invalidArgument, "security.maxFailedLogins must be positive")
        }
        if !(10...20).contains(security.scryptCostExponent) {
            throw WireError(.invalidArgument, "security.scryptCostExponent must be 10...20")
        }
        if nodeID == 0 { throw WireError(.invalidArgument, "nodeID must not be 0") }
        try limits.validate()
    }
}
