import Crypto
import CryptoExtras
import Foundation

/// scrypt password hashes (swift-crypto's CryptoExtras), encoded as
/// `scrypt$<log2 N>$<r>$<p>$<base64 salt>$<base64 key>` so that parameters can grow without breaking old hashes.
public enum PasswordHasher {
    /// Hashes `password` with a fresh 16-byte salt.
    public static func hash(_ password: String, costExponent: Int) throws -> [UInt8] {
        var salt = [UInt8](repeating: 0, count: 16)
        var generator = SystemRandomNumberGenerator()
        for index in salt.indices { salt[index] = UInt8.random(in: 0...255, using: &generator) }
        let key = try derive(password, salt: salt, costExponent: costExponent, r: 8, p: 1)
        let text = "scrypt$\(costExponent)$8$1$\(Data(salt).base64EncodedString())$\(Data(key).base64EncodedString())"
        return Array(text.utf8)
    }

    /// True when `password` matches `encoded`. Compares in constant time; malformed hashes never match.
    public static func verify(_ password: String, against encoded: [UInt8]) -> Bool {
        let parts = String(decoding: encoded, as: UTF8.self).split(separator: "$").map(String.init)
        guard parts.count == 6, parts[0] == "scrypt", let cost = Int(parts[1]), (10...20).contains(cost),
            let r = Int(parts[2]), let p = Int(parts[3]), (1...16).contains(r), (1...4).contains(p),
            let salt = Data(base64Encoded: parts[4]), let expected = Data(base64Encoded: parts[5]),
            expected.count == 32,
            let derived = try? derive(password, salt: [UInt8](salt), costExponent: cost, r: r, p: p)
        else { return false }
        // SymmetricKey equality is constant-time.
        return SymmetricKey(data: derived) == SymmetricKey(data: expected)
    }

    private static func derive(_ password: String, salt: [UInt8], costExponent: Int, r: Int, p: Int) throws -> [UInt8] {
        let key = try KDF.Scrypt.deriveKey(
            from: Array(password.utf8),
            salt: salt,
            outputByteCount: 32,
            rounds: 1 << costExponent,
            blockSize: r,
            parallelism: p
        )
        return key.withUnsafeBytes { Array($0) }
    }
}
