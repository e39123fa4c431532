import Dispatch
import Foundation

/// Monotonic nanoseconds (one clock for senders and receivers: they share this process).
@inline(__always) func monotonicNanoseconds() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

/// A small, fast, seedable generator (SplitMix64): the same `--seed` gives the same workload.
struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// An independent generator for worker `index` (its own stream, still determined by the seed).
    func fork(_ index: Int) -> SeededGenerator {
        var copy = SeededGenerator(seed: state ^ (UInt64(index) &* 0xD1B5_4A32_D192_ED03))
        _ = copy.next()
        return copy
    }
}

/// Zipf-distributed ranks in `0..<count` (rank 0 the most popular), by inverse transform over the cumulative
/// weights `1 / (rank + 1)^exponent`.
struct Zipf: Sendable {
    private let cumulative: [Double]

    init(count: Int, exponent: Double) {
        var running = 0.0
        var cumulative: [Double] = []
        cumulative.reserveCapacity(count)
        for rank in 0..<count {
            running += 1 / pow(Double(rank + 1), exponent)
            cumulative.append(running)
        }
        self.cumulative = cumulative.map { $0 / running }
    }

    func next(using generator: inout some RandomNumberGenerator) -> Int {
        let u = Double.random(in: 0..<1, using: &generator)
        var low = 0
        var high = cumulative.count - 1
        while low < high {
            let middle = (low + high) / 2
            if cumulative[middle] < u { low = middle + 1 } else { high = middle }
        }
        return low
    }
}

/// Bench payloads carry their send time (monotonic nanoseconds, big-endian) in the first 8 bytes, so that a
/// receiver measures end-to-end delivery latency; the rest is filler of the requested size.
enum StampedPayload {
    static func make(size: Int, stamp: UInt64, filler: UInt8 = 0x61) -> Data {
        var data = Data(count: max(size, 8))
        data.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: stamp.bigEndian, toByteOffset: 0, as: UInt64.self)
            if raw.count > 8 { memset(raw.baseAddress! + 8, Int32(filler), raw.count - 8) }
        }
        return data
    }

    static func stamp(of payload: Data) -> UInt64? {
        guard payload.count >= 8 else { return nil }
        return payload.withUnsafeBytes { UInt64(bigEndian: $0.loadUnaligned(fromByteOffset: 0, as: UInt64.self)) }
    }
}
