import Foundation
import NIOCore
import WarblerWire

#if canImport(Glibc)
import Glibc
#endif

/// A plain blocking socket that speaks raw frames, for feeding a node bad input.
final class RawConnection {
    private let socket: Int32
    var socketDescriptor: Int32 { socket }
    private var buffer: [UInt8] = []

    /// Connects to 127.0.0.1:`port`, from `source` (another 127.0.0.x address) when given.
    init(port: Int, from source: String? = nil) throws {
        socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        if let source {
            var local = sockaddr_in()
            local.sin_family = sa_family_t(AF_INET)
            local.sin_addr.s_addr = inet_addr(source)
            let bound = withUnsafePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
                }
            }
            guard bound else { throw TestFailure("cannot bind to \(source)") }
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        guard connected else { throw TestFailure("cannot connect to \(port)") }
        // Blocking reads give up after 30 s: a password check on a debug build takes most of a second of a core,
        // and several times that while the other suites hash and simulate beside it (5 s was seen to run out).
        var timeout = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(socket, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(socket) }

    func write(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Writes one length-prefixed frame with `body`.
    func writeFrame(_ body: [UInt8]) {
        var length = UInt32(body.count).bigEndian
        write(withUnsafeBytes(of: &length) { Array($0) } + body)
    }

    func request(_ id: UInt64, _ body: Warbler_V1_ClientFrame.OneOf_Body) {
        var frame = Warbler_V1_ClientFrame()
        frame.requestID = id
        frame.body = body
        writeFrame(Array(FrameCodec.encode(frame, allocator: ByteBufferAllocator()).readableBytesView))
    }

    /// The next whole frame already received, if any.
    private func bufferedFrame() -> Warbler_V1_ServerFrame?? {
        guard buffer.count >= 4 else { return nil }
        let length = Int(buffer[0]) << 24 | Int(buffer[1]) << 16 | Int(buffer[2]) << 8 | Int(buffer[3])
        guard buffer.count >= 4 + length else { return nil }
        let body = Array(buffer[4..<(4 + length)])
        buffer.removeFirst(4 + length)
        return .some(try? FrameCodec.decodeServerFrame(ByteBuffer(bytes: body)))
    }

    /// Like ``readFrame()``, without blocking a thread while it waits (async tests share a few threads): the
    /// next server frame, or nil when the node closed the connection or nothing came within `seconds`.
    func nextFrame(within seconds: Double = 60) async -> Warbler_V1_ServerFrame? {
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            if let frame = bufferedFrame() { return frame }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let count = chunk.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if count > 0 {
                buffer.append(contentsOf: chunk[0..<count])
                continue
            }
            guard count < 0, errno == EAGAIN || errno == EWOULDBLOCK, Date() < deadline else { return nil }
            try? await Task.sleep(nanoseconds: 5_000_000)
        }
    }

    /// Reads the next server frame, or nil when the node closed the connection (or nothing came in time).
    func readFrame() -> Warbler_V1_ServerFrame? {
        while true {
            if let frame = bufferedFrame() { return frame }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let count = chunk.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, 0) }
            if count <= 0 { return nil }
            buffer.append(contentsOf: chunk[0..<count])
        }
    }

    /// True when the node has closed the connection.
    func isClosedByPeer() -> Bool { readFrame() == nil }

    /// The error code of the next reply (pushes are skipped), if it is an error.
    func nextErrorCode() -> String? {
        while let frame = readFrame() {
            if case .error(let error) = frame.body { return error.code }
            if frame.requestID != 0 { return nil }
        }
        return nil
    }

    func handshake() {
        request(1, .hello(.with { $0.protocolVersion = 1 }))
        _ = readFrame()
    }

    func login(_ user: String, _ password: String) -> Warbler_V1_ServerFrame? {
        request(
            2,
            .login(
                .with {
                    $0.user = user
                    $0.password = password
                }
            )
        )
        while let frame = readFrame() {
            if frame.requestID != 0 { return frame }
        }
        return nil
    }
}
