import WarblerWire

/// A failure seen by the SDK: an error frame from the node, or a connection problem.
public struct ClientError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The protocol's error code (for example `auth.invalid_credentials`), or `client.*` for local failures.
    public var code: String
    public var message: String

    public init(code: String, message: String) {
        self.code = code
        self.message = message
    }

    init(_ error: Warbler_V1_Error) {
        self.init(code: error.code, message: error.message)
    }

    public var description: String { "\(code): \(message)" }

    /// The connection is closed and the request cannot be (re)sent.
    public static func disconnected(_ why: String) -> ClientError {
        ClientError(code: "client.disconnected", message: why)
    }
    /// The node answered with something the request did not expect.
    public static func unexpected(_ what: String) -> ClientError {
        ClientError(code: "client.unexpected_reply", message: what)
    }
}
