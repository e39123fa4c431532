/// A protocol-level error: what the node puts in an `Error` frame.
///
/// ``code`` is stable and documented in `docs/protocol.md`; ``message`` is for people; ``isFatal`` says the
/// connection closes after the error is sent (the byte stream cannot be trusted any more).
public struct WireError: Error, Sendable, Hashable, CustomStringConvertible {
    public var code: ErrorCode
    public var message: String
    public var isFatal: Bool
    /// The request the error answers, when it could be read (0 otherwise).
    public var requestID: UInt64 = 0
    public var location: String

    public init(
        _ code: ErrorCode,
        _ message: String,
        fatal: Bool = false,
        file: StaticString = #fileID,
        line: UInt = #line
    ) {
        self.code = code
        self.message = message
        self.isFatal = fatal
        self.location = "\(file):\(line)"
    }

    public var description: String { "\(code): \(message)\(isFatal ? " (fatal)" : "")" }

    /// The error as the frame the node sends, answering ``requestID``.
    public var frame: Warbler_V1_ServerFrame { frame(requestID: requestID) }

    /// The error as the frame the node sends.
    public func frame(requestID: UInt64) -> Warbler_V1_ServerFrame {
        var frame = Warbler_V1_ServerFrame()
        frame.requestID = requestID
        frame.error = Warbler_V1_Error.with {
            $0.code = code.rawValue
            $0.message = message
            $0.fatal = isFatal
        }
        return frame
    }
}

/// The stable error codes of the client protocol. New codes may be added; existing ones never change meaning.
public struct ErrorCode: Sendable, Hashable, RawRepresentable, CustomStringConvertible {
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public var description: String { rawValue }

    // Framing and protocol.
    /// The length prefix announces more than the frame limit. Fatal.
    public static let frameTooLarge = ErrorCode(rawValue: "protocol.frame_too_large")
    /// The frame's bytes are not a valid protobuf (or JSON) frame.
    public static let malformedFrame = ErrorCode(rawValue: "protocol.malformed_frame")
    /// The frame carries no request the node knows (an empty or newer `body`).
    public static let unknownRequest = ErrorCode(rawValue: "protocol.unknown_request")
    /// `request_id` is 0 on a request.
    public static let missingRequestID = ErrorCode(rawValue: "protocol.missing_request_id")
    /// The first frame was not `Hello`. Fatal.
    public static let helloRequired = ErrorCode(rawValue: "protocol.hello_required")
    /// `Hello.protocol_version` is not one the node speaks. Fatal.
    public static let unsupportedVersion = ErrorCode(rawValue: "protocol.unsupported_version")

    // Authentication and authorisation.
    /// The request needs a logged-in session.
    public static let authRequired = ErrorCode(rawValue: "auth.required")
    /// Wrong user name, password or one-time code (deliberately not saying which).
    public static let invalidCredentials = ErrorCode(rawValue: "auth.invalid_credentials")
    /// Too many failed attempts; retry later.
    public static let lockedOut = ErrorCode(rawValue: "auth.locked_out")
    /// The session token expired or was revoked.
    public static let sessionExpired = ErrorCode(rawValue: "auth.session_expired")
    /// The caller is not allowed to do this.
    public static let forbidden = ErrorCode(rawValue: "auth.forbidden")
    /// The connection did not log in within the node's login timeout. Fatal.
    public static let loginTimeout = ErrorCode(rawValue: "auth.login_timeout")

    // Chat.
    /// No such conversation, or the caller is not a member (the node does not reveal which).
    public static let conversationNotFound = ErrorCode(rawValue: "chat.conversation_not_found")
    /// No such user.
    public static let userNotFound = ErrorCode(rawValue: "chat.user_not_found")
    /// A field is empty, too long, or out of range; the message names it.
    public static let invalidArgument = ErrorCode(rawValue: "chat.invalid_argument")
    /// The payload exceeds `Welcome.max_payload_bytes`.
    public static let payloadTooLarge = ErrorCode(rawValue: "chat.payload_too_large")

    // Node.
    /// Too many requests; slow down.
    public static let rateLimited = ErrorCode(rawValue: "node.rate_limited")
    /// The node cannot serve the request now (no quorum, shutting down); retry.
    public static let unavailable = ErrorCode(rawValue: "node.unavailable")
    /// The node holds as many client connections as its open files allow; connect to another node or retry
    /// later. Fatal.
    public static let connectionLimit = ErrorCode(rawValue: "node.connection_limit")
    /// A bug; the request may or may not have taken effect.
    public static let internalError = ErrorCode(rawValue: "node.internal")
}
