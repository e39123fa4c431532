import Crypto
import Foundation
import NIOSSL
import SwiftASN1
import X509

/// A cluster's certificate authority and its nodes' certificates (`warbler cert init-ca`, `warbler cert issue`).
///
/// Nodes authenticate each other with mutual TLS: every node presents a certificate signed by the cluster CA
/// whose common name is `warbler-node-<id>`, and accepts only peers that do the same. Keys are P-256; files
/// are PEM, private keys written with mode 0600.
public enum ClusterCertificates {
    /// Files in a certificate directory.
    public static let caCertificateFile = "ca.pem"
    public static let caKeyFile = "ca-key.pem"
    public static let nodeCertificateFile = "node.pem"
    public static let nodeKeyFile = "node-key.pem"

    /// The common name a node's certificate carries.
    public static func commonName(node: UInt64) -> String { "warbler-node-\(node)" }

    /// The node id a certificate's common name names, or nil.
    public static func nodeID(commonName: String) -> UInt64? {
        guard commonName.hasPrefix("warbler-node-") else { return nil }
        return UInt64(commonName.dropFirst("warbler-node-".count))
    }

    /// Creates a new CA (certificate and key) in `directory`. Refuses to overwrite an existing one.
    public static func initCA(in directory: String, validDays: Int = 3650) throws {
        let fm = FileManager.default
        try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let keyPath = directory + "/" + caKeyFile
        guard !fm.fileExists(atPath: keyPath) else {
            throw CertificateError("\(keyPath) exists; a cluster has one CA — refusing to replace it")
        }
        let key = P256.Signing.PrivateKey()
        let name = try DistinguishedName {
            OrganizationName("Warbler")
            CommonName("Warbler cluster CA \(UUID().uuidString.prefix(8))")
        }
        let now = Date()
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: .init(key.publicKey),
            notValidBefore: now - 300,
            notValidAfter: now + Double(validDays) * 86_400,
            issuer: name,
            subject: name,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
            },
            issuerPrivateKey: .init(key)
        )
        try write(key.pemRepresentation, to: keyPath, secret: true)
        try write(try certificate.serializeAsPEM().pemString, to: directory + "/" + caCertificateFile, secret: false)
    }

    /// Issues a certificate for node `node` from the CA in `caDirectory` into `outputDirectory` (which also
    /// receives a copy of the CA certificate, not its key). `hosts` become subject alternative names.
    public static func issue(
        node: UInt64,
        caDirectory: String,
        outputDirectory: String,
        hosts: [String] = ["localhost", "127.0.0.1"],
        validDays: Int = 825
    ) throws {
        guard node != 0 else { throw CertificateError("node ids start at 1") }
        let caPEM = try String(contentsOfFile: caDirectory + "/" + caCertificateFile, encoding: .utf8)
        let caKeyPEM = try String(contentsOfFile: caDirectory + "/" + caKeyFile, encoding: .utf8)
        let caCertificate = try Certificate(pemEncoded: caPEM)
        let caKey = try P256.Signing.PrivateKey(pemRepresentation: caKeyPEM)
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName {
            OrganizationName("Warbler")
            CommonName(commonName(node: node))
        }
        var names: [GeneralName] = []
        for host in hosts {
            if let address = ipv4Bytes(host) {
                names.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice(address))))
            } else {
                names.append(.dnsName(host))
            }
        }
        let now = Date()
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: .init(key.publicKey),
            notValidBefore: now - 300,
            notValidAfter: now + Double(validDays) * 86_400,
            issuer: caCertificate.subject,
            subject: subject,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true, keyEncipherment: true))
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
                SubjectAlternativeNames(names)
            },
            issuerPrivateKey: .init(caKey)
        )
        try FileManager.default.createDirectory(atPath: outputDirectory, withIntermediateDirectories: true)
        try write(key.pemRepresentation, to: outputDirectory + "/" + nodeKeyFile, secret: true)
        try write(
            try certificate.serializeAsPEM().pemString,
            to: outputDirectory + "/" + nodeCertificateFile,
            secret: false
        )
        if caDirectory != outputDirectory {
            try write(caPEM, to: outputDirectory + "/" + caCertificateFile, secret: false)
        }
    }

    /// The node id in a certificate directory's node certificate.
    public static func nodeID(inDirectory directory: String) throws -> UInt64 {
        let pem = try String(contentsOfFile: directory + "/" + nodeCertificateFile, encoding: .utf8)
        let certificate = try Certificate(pemEncoded: pem)
        guard let id = nodeID(of: certificate) else {
            throw CertificateError("\(directory)/\(nodeCertificateFile) is not a Warbler node certificate")
        }
        return id
    }

    /// The node id a peer's (already verified) TLS certificate names.
    public static func nodeID(of certificate: NIOSSLCertificate) -> UInt64? {
        guard let der = try? certificate.toDERBytes(), let parsed = try? Certificate(derEncoded: der) else {
            return nil
        }
        return nodeID(of: parsed)
    }

    static func nodeID(of certificate: Certificate) -> UInt64? {
        for rdn in certificate.subject {
            for attribute in rdn where attribute.type == .RDNAttributeType.commonName {
                let text = attribute.description
                let value = text.hasPrefix("CN=") ? String(text.dropFirst(3)) : text
                if let id = nodeID(commonName: value) { return id }
            }
        }
        return nil
    }

    /// TLS settings for a node: present its certificate, require and verify the peer's against the cluster CA.
    /// Peers are identified by the node id in their certificate, not by host name.
    public static func tlsConfiguration(directory: String, server: Bool) throws -> TLSConfiguration {
        let chain = try NIOSSLCertificate.fromPEMFile(directory + "/" + nodeCertificateFile).map {
            NIOSSLCertificateSource.certificate($0)
        }
        let key = try NIOSSLPrivateKey(file: directory + "/" + nodeKeyFile, format: .pem)
        var configuration =
            server
            ? TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
            : TLSConfiguration.makeClientConfiguration()
        if !server {
            configuration.certificateChain = chain
            configuration.privateKey = .privateKey(key)
        }
        configuration.minimumTLSVersion = .tlsv13
        configuration.trustRoots = .file(directory + "/" + caCertificateFile)
        configuration.certificateVerification = .noHostnameVerification
        return configuration
    }

    private static func write(_ text: String, to path: String, secret: Bool) throws {
        let created = FileManager.default.createFile(
            atPath: path,
            contents: Data(text.utf8),
            attributes: [.posixPermissions: secret ? 0o600 : 0o644]
        )
        guard created else { throw CertificateError("cannot write \(path)") }
    }

    private static func ipv4Bytes(_ host: String) -> [UInt8]? {
        let parts = host.split(separator: ".")
        guard parts.count == 4 else { return nil }
        let bytes = parts.compactMap { UInt8($0) }
        return bytes.count == 4 ? bytes : nil
    }
}

/// A certificate file is missing, unreadable or not what Warbler expects.
public struct CertificateError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
