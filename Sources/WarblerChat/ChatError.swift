import WarblerWire

/// A refused chat operation. The code is the client protocol's, so the gateway forwards it unchanged.
public struct ChatError: Error, Sendable, Hashable, CustomStringConvertible {
    public var code: ErrorCode
    public var message: String
    public var location: String

    public init(_ code: ErrorCode, _ message: String, file: StaticString = #fileID, line: UInt = #line) {
        self.code = code
        self.message = message
        self.location = "\(file):\(line)"
    }

    public var description: String { "\(code): \(message)" }
}
