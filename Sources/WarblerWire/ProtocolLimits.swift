/// The version and size limits of the client protocol.
public struct ProtocolLimits: Sendable, Hashable {
    /// The protocol version this build speaks (`Hello.protocol_version`).
    public static let currentVersion: UInt32 = 1

    /// The largest frame accepted, excluding its 4-byte length prefix. Default 1 MiB.
    public var maxFrameBytes: Int = 1 << 20
    /// The largest message payload accepted. Default 256 KiB.
    public var maxPayloadBytes: Int = 256 << 10

    /// Default limits.
    public init() {}

    /// Checks the limits; throws naming the wrong field.
    public func validate() throws(WireError) {
        if maxFrameBytes < 1024 || maxFrameBytes > 64 << 20 {
            throw WireError(.invalidArgument, "maxFrameBytes must be between 1 KiB and 64 MiB, got \(maxFrameBytes)")
        }
        if maxPayloadBytes < 1 || maxPayloadBytes > maxFrameBytes - 1024 {
            throw WireError(
                .invalidArgument,
                "maxPayloadBytes must be between 1 and maxFrameBytes - 1 KiB, got \(maxPayloadBytes)"
            )
        }
    }
}
