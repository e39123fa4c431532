// swift-tools-version:6.0
import PackageDescription

/// The node and the bench allocate with jemalloc (Debian's `libjemalloc-dev`) instead of glibc's malloc: 6–13%
/// more messages per second in every scenario of `warbler-bench` (docs/performance.md), and the allocator
/// RocksDB is built and tuned for. Linked ahead of libc, its `malloc` and `free` serve the Swift runtime and
/// RocksDB too.
let jemalloc: [LinkerSetting] = [.linkedLibrary("jemalloc", .when(platforms: [.linux]))]

let package = Package(
    name: "Warbler",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "WarblerRaft", targets: ["WarblerRaft"]),
        .library(name: "WarblerStorage", targets: ["WarblerStorage"]),
        .library(name: "WarblerWire", targets: ["WarblerWire"]),
        .library(name: "WarblerChat", targets: ["WarblerChat"]),
        .library(name: "WarblerClient", targets: ["WarblerClient"]),
        .executable(name: "warbler", targets: ["warbler"]),
        .executable(name: "warbler-sim", targets: ["warbler-sim"]),
        .executable(name: "warbler-raft-bench", targets: ["warbler-raft-bench"]),
        .executable(name: "warbler-bench", targets: ["warbler-bench"]),
        .executable(name: "warbler-micro-bench", targets: ["warbler-micro-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.0"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.0"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.7.0"),
    ],
    targets: [
        .systemLibrary(name: "CRocksDB", pkgConfig: "rocksdb", providers: [.apt(["librocksdb-dev"])]),
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .target(name: "WarblerRaft"),
        .target(
            name: "WarblerWire",
            dependencies: [
                "WarblerRaft",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            exclude: ["Proto"]
        ),
        .target(name: "WarblerStorage", dependencies: ["CRocksDB", "CLZ4", "WarblerRaft", "WarblerWire"]),
        .target(
            name: "WarblerCluster",
            dependencies: [
                "WarblerRaft", "WarblerStorage", "WarblerWire",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        .target(
            name: "WarblerChat",
            dependencies: [
                "WarblerStorage", "WarblerWire", "WarblerCluster",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        .target(name: "WarblerSimulation", dependencies: ["WarblerRaft", "WarblerStorage"]),
        .executableTarget(
            name: "warbler-sim",
            dependencies: [
                "WarblerSimulation",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "warbler",
            dependencies: [
                "WarblerServer", "WarblerChat", "WarblerWire", "WarblerClient",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            linkerSettings: jemalloc
        ),
        .executableTarget(
            name: "warbler-bench",
            dependencies: [
                "WarblerChat", "WarblerClient", "WarblerWire",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "bench/WarblerBench",
            linkerSettings: jemalloc
        ),
        .executableTarget(name: "warbler-raft-bench", dependencies: ["WarblerRaft"], path: "bench/RaftBench"),
        .executableTarget(
            name: "warbler-micro-bench",
            dependencies: [
                "WarblerRaft", "WarblerStorage", "WarblerWire",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "bench/MicroBench"
        ),
        .target(
            name: "WarblerServer",
            dependencies: [
                "WarblerChat", "WarblerCluster", "WarblerStorage", "WarblerWire", "WarblerRaft",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "CryptoExtras", package: "swift-crypto"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        .target(
            name: "WarblerClient",
            dependencies: [
                "WarblerWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "WarblerIntegrationTests",
            dependencies: [
                "WarblerClient", "WarblerWire", "WarblerChat", "warbler",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"), .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        .testTarget(
            name: "WarblerServerTests",
            dependencies: [
                "WarblerServer", "WarblerWire", .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"), .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "WarblerClusterTests",
            dependencies: [
                "WarblerCluster", "WarblerRaft", "WarblerStorage", "WarblerWire",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "WarblerChatTests",
            dependencies: [
                "WarblerChat", "WarblerCluster", "WarblerStorage", "WarblerWire", "WarblerRaft",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        .testTarget(
            name: "WarblerClientTests",
            dependencies: ["WarblerClient", "WarblerWire", .product(name: "NIOEmbedded", package: "swift-nio")]
        ),
        .testTarget(name: "WarblerStorageTests", dependencies: ["WarblerStorage", "WarblerRaft", "WarblerWire"]),
        .testTarget(
            name: "WarblerWireTests",
            dependencies: ["WarblerWire", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "WarblerRaftTests",
            dependencies: ["WarblerRaft", "WarblerSimulation"],
            exclude: ["testdata"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
