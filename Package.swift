// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "Warbler",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "WarblerRaft", targets: ["WarblerRaft"]),
        .executable(name: "warbler-sim", targets: ["warbler-sim"]),
        .executable(name: "warbler-raft-bench", targets: ["warbler-raft-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0")
    ],
    targets: [
        .target(name: "WarblerRaft"),
        .target(name: "WarblerSimulation", dependencies: ["WarblerRaft"]),
        .executableTarget(
            name: "warbler-sim",
            dependencies: [
                "WarblerSimulation",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(name: "warbler-raft-bench", dependencies: ["WarblerRaft"], path: "bench/RaftBench"),
        .testTarget(
            name: "WarblerRaftTests",
            dependencies: ["WarblerRaft", "WarblerSimulation"],
            exclude: ["testdata"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
