/// Bounds on what clients may create. Checked when a command is built and again when it is applied.
public struct ChatLimits: Sendable, Hashable {
    /// User names: 1 to this many bytes of letters, digits, `.`, `_` and `-`.
    public var maxNameBytes = 64
    /// Group titles: 1 to this many bytes.
    public var maxTitleBytes = 200
    /// Members of one group.
    public var maxMembers = 1000
    /// `client_message_id`: 1 to this many bytes.
    public var maxClientMessageIDBytes = 64
    /// Message payloads: 1 to this many bytes.
    public var maxPayloadBytes = 256 << 10
    /// Messages per history or sync page.
    public var maxPageSize = 500
    /// Sessions one user holds at a time (devices, browsers, bots); a login beyond it ends the user's oldest.
    public var maxSessionsPerUser = 64

    /// Default limits.
    public init() {}
}
