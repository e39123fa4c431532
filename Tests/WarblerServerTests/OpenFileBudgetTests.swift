import Testing
import WarblerServer
import WarblerWire

struct OpenFileBudgetTests {
    @Test func storageAndTheNodeKeepAShareAndClientsGetTheRest() throws {
        let small = try OpenFileBudget(limit: 1024)
        #expect(small.storageFiles == 256)
        #expect(small.reservedFiles == 256)
        #expect(small.maxClientConnections == 512)
        #expect(small.maxPeerConnections == 64)

        // Large limits: the shares stop growing, and clients get almost everything.
        let large = try OpenFileBudget(limit: 1 << 20)
        #expect(large.storageFiles == 1024)
        #expect(large.reservedFiles == 1024)
        #expect(large.maxClientConnections == (1 << 20) - 2048)
        #expect(large.maxPeerConnections == 128)

        #expect(try OpenFileBudget(limit: 20_000).maxClientConnections == 17_952)
        #expect(try OpenFileBudget(limit: 20_000, maxClientConnections: 5_000).maxClientConnections == 5_000)
    }

    @Test func aLimitTooLowOrAConnectionCountItCannotHoldIsATypedError() {
        #expect(throws: WireError.self) { try OpenFileBudget(limit: 511) }
        #expect(throws: WireError.self) { try OpenFileBudget(limit: 20_000, maxClientConnections: 17_953) }
        #expect(throws: WireError.self) { try OpenFileBudget(limit: 20_000, maxClientConnections: 0) }
        do {
            _ = try OpenFileBudget(limit: 20_000, maxClientConnections: 100_000)
        } catch {
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains("at least 102048"))
            #expect(error.message.contains("at most 17952"))
        }
    }
}
