// Offline verification of Plasm execution receipts, without asking any node.
//
// This mirrors src/plasm_grpc/api/verify.py and docs/receipts.md ("Verifying a
// receipt"), check for check and with the same check names. Order matters
// (DESIGN.md, "Signed envelopes"): the Ed25519 signature is checked over the
// exact payload bytes received, under the receipt domain, and only then is
// the payload decoded. Nothing is ever re-serialized to be verified.
//
// Crypto is swift-crypto, which is CryptoKit on Apple platforms:
// Curve25519.Signing.PublicKey(rawRepresentation:), isValidSignature(_:for:)
// and SHA256.hash(data:).

import Crypto
import Foundation
import SwiftProtobuf

/// One verification step and its result. The names are those of the Python
/// verifier and of the Verify RPC: "signature", "decode", "well_formed",
/// "version", "signer", "expected_executor", "stdout", "stderr", "module",
/// "input".
public struct ReceiptCheck: Equatable {
    public let name: String
    public let passed: Bool
    public let detail: String
}

/// What the client sent with the job, to check the receipt's input_sha256.
public struct ReceiptInput {
    public var args: [String]
    /// Environment variables in the order they were sent (the order is hashed).
    public var env: [(name: String, value: String)]
    public var stdin: Data

    public init(args: [String], env: [(name: String, value: String)], stdin: Data) {
        self.args = args
        self.env = env
        self.stdin = stdin
    }

    public init(manifest: Plasm_V1_JobManifest) {
        self.init(
            args: manifest.args,
            env: manifest.env.map { (name: $0.name, value: $0.value) },
            stdin: manifest.stdin
        )
    }
}

/// The outcome of verifying one receipt.
public struct ReceiptVerification {
    /// True when there was at least one check and every check passed.
    public let valid: Bool
    public let checks: [ReceiptCheck]
    /// The decoded body; nil unless the signature was valid and the payload decoded.
    public let body: Plasm_V1_ReceiptBody?
    /// hex(sha256(signer public key)); empty when the key is not 32 bytes.
    public let signerNodeID: String

    init(checks: [ReceiptCheck], body: Plasm_V1_ReceiptBody?, signerNodeID: String) {
        self.valid = !checks.isEmpty && checks.allSatisfy { $0.passed }
        self.checks = checks
        self.body = body
        self.signerNodeID = signerNodeID
    }

    /// The first check that failed, if any.
    public var firstFailure: ReceiptCheck? {
        return checks.first { !$0.passed }
    }
}

public enum ReceiptVerifier {
    /// The signing domain of receipts (plasm_grpc.core.envelope.RECEIPT_DOMAIN).
    public static let receiptDomain = "plasm/receipt/v1"
    public static let receiptVersion: UInt32 = 1
    public static let publicKeyLength = 32
    public static let signatureLength = 64

    /// What is signed: the ASCII domain, one 0x00 byte, then the payload bytes.
    public static func signingInput(domain: String, payload: Data) -> Data {
        var message = Data(domain.utf8)
        message.append(0)
        message.append(payload)
        return message
    }

    /// A node id: SHA-256 of the raw 32-byte Ed25519 public key, 64 lowercase
    /// hex characters. Nil when the key is not 32 bytes.
    public static func nodeID(publicKey: Data) -> String? {
        guard publicKey.count == publicKeyLength else {
            return nil
        }
        return sha256Hex(publicKey)
    }

    public static func sha256Hex(_ data: Data) -> String {
        return Hex.encode(SHA256.hash(data: data))
    }

    /// Why the bare envelope check fails, or nil when the signature is valid.
    public static func signatureProblem(
        _ envelope: Plasm_V1_SignedEnvelope,
        domain: String = ReceiptVerifier.receiptDomain
    ) -> String? {
        let keyLength = envelope.signerPublicKey.count
        if keyLength != publicKeyLength {
            return "signer public key must be \(publicKeyLength) bytes, got \(keyLength)"
        }
        let signatureBytes = envelope.signature.count
        if signatureBytes != signatureLength {
            return "signature must be \(signatureLength) bytes, got \(signatureBytes)"
        }
        guard let key = try? Curve25519.Signing.PublicKey(rawRepresentation: envelope.signerPublicKey) else {
            return "signer public key is not an Ed25519 public key"
        }
        let message = signingInput(domain: domain, payload: envelope.payload)
        if !key.isValidSignature(envelope.signature, for: message) {
            return "signature does not verify under domain '\(domain)'"
        }
        return nil
    }

    /// The bare envelope check: lengths, then Ed25519 over domain || 0x00 || payload.
    public static func signatureIsValid(
        _ envelope: Plasm_V1_SignedEnvelope,
        domain: String = ReceiptVerifier.receiptDomain
    ) -> Bool {
        return signatureProblem(envelope, domain: domain) == nil
    }

    /// Verify a receipt offline. Every optional argument adds one check.
    ///
    /// - expectedExecutorNodeID: the node that must have signed it, for example
    ///   SubmitResponse.executorNodeID.
    /// - stdout, stderr, module: bytes you hold, whose SHA-256 the receipt binds.
    /// - input: the args, env and stdin you sent (docs/receipts.md, "The input hash").
    public static func verify(
        _ envelope: Plasm_V1_SignedEnvelope,
        expectedExecutorNodeID: String? = nil,
        stdout: Data? = nil,
        stderr: Data? = nil,
        module: Data? = nil,
        input: ReceiptInput? = nil
    ) -> ReceiptVerification {
        var checks: [ReceiptCheck] = []
        func add(_ name: String, _ passed: Bool, _ detail: String) {
            checks.append(ReceiptCheck(name: name, passed: passed, detail: detail))
        }

        // 1. The signature, over the bytes as received.
        guard let signer = nodeID(publicKey: envelope.signerPublicKey) else {
            let count = envelope.signerPublicKey.count
            add("signature", false, "signer public key must be \(publicKeyLength) bytes, got \(count)")
            return ReceiptVerification(checks: checks, body: nil, signerNodeID: "")
        }
        if let problem = signatureProblem(envelope) {
            add("signature", false, problem)
            return ReceiptVerification(checks: checks, body: nil, signerNodeID: signer)
        }
        add("signature", true, "valid Ed25519 signature under '\(receiptDomain)'")

        // 2. Only then decode the payload.
        let body: Plasm_V1_ReceiptBody
        do {
            body = try Plasm_V1_ReceiptBody(serializedBytes: envelope.payload)
        } catch {
            add("decode", false, "receipt payload is not a ReceiptBody: \(error)")
            return ReceiptVerification(checks: checks, body: nil, signerNodeID: signer)
        }
        if let problem = wellFormedProblem(body) {
            add("well_formed", false, problem)
        }
        if body.version != receiptVersion {
            add("version", false, "receipt version \(body.version), expected \(receiptVersion)")
        }

        // 3. The signer is the executor the receipt names, and the one expected.
        if body.executorNodeID == signer {
            add("signer", true, "signed by the executor \(signer)")
        } else {
            let named = body.executorNodeID.isEmpty ? "(none)" : body.executorNodeID
            add("signer", false, "signed by \(signer) but names executor \(named)")
        }
        if let expected = expectedExecutorNodeID, !expected.isEmpty {
            add("expected_executor", signer == expected, "signer \(signer), expected \(expected)")
        }

        // 4. What the caller holds hashes to what the receipt binds.
        if let stdout = stdout {
            checks.append(hashCheck("stdout", expected: body.stdoutSha256, data: stdout))
        }
        if let stderr = stderr {
            checks.append(hashCheck("stderr", expected: body.stderrSha256, data: stderr))
        }
        if let module = module {
            checks.append(hashCheck("module", expected: body.moduleSha256, data: module))
        }
        if let input = input {
            let actual = InputHash.sha256Hex(args: input.args, env: input.env, stdin: input.stdin)
            if actual == body.inputSha256 {
                add("input", true, "input sha256 \(actual) matches")
            } else {
                add("input", false, "input sha256 \(actual), receipt says \(body.inputSha256)")
            }
        }
        return ReceiptVerification(checks: checks, body: body, signerNodeID: signer)
    }

    static func hashCheck(_ name: String, expected: String, data: Data) -> ReceiptCheck {
        let actual = sha256Hex(data)
        if actual == expected {
            return ReceiptCheck(name: name, passed: true, detail: "sha256 \(actual) matches the receipt")
        }
        return ReceiptCheck(name: name, passed: false, detail: "sha256 \(actual) but the receipt says \(expected)")
    }

    /// What plasm_grpc.api.codec.receipt_from_pb rejects: hashes and node ids
    /// that are not 64 lowercase hex characters, and an outcome that is not one
    /// of the defined ones.
    static func wellFormedProblem(_ body: Plasm_V1_ReceiptBody) -> String? {
        let hex64Fields: [(String, String)] = [
            ("module_sha256", body.moduleSha256),
            ("input_sha256", body.inputSha256),
            ("stdout_sha256", body.stdoutSha256),
            ("stderr_sha256", body.stderrSha256),
            ("executor_node_id", body.executorNodeID),
        ]
        for (name, value) in hex64Fields where !isHex64(value) {
            return "\(name) must be 64 lowercase hex characters"
        }
        if !body.requesterNodeID.isEmpty && !isHex64(body.requesterNodeID) {
            return "requester_node_id must be 64 lowercase hex characters"
        }
        switch body.outcome {
        case .unspecified:
            return "receipt has no outcome"
        case .UNRECOGNIZED(let raw):
            return "receipt has unknown outcome \(raw)"
        default:
            return nil
        }
    }

    static func isHex64(_ value: String) -> Bool {
        let bytes = Array(value.utf8)
        return bytes.count == 64 && bytes.allSatisfy { Hex.digits.contains($0) }
    }
}

/// The canonical encoding of a job's input that a receipt's input_sha256
/// covers (docs/receipts.md, "The input hash"; plasm_grpc.core.input_hash):
///
///     "plasm/input/v1" 0x00
///     u32be(number of args)     then per arg:  u32be(byte length) bytes
///     u32be(number of env vars) then per var:  u32be(len(name)) name u32be(len(value)) value
///     u64be(len(stdin)) stdin
///
/// Strings are UTF-8; env keeps the order the client sent.
public enum InputHash {
    public static let domain = "plasm/input/v1"

    public static func encode(args: [String], env: [(name: String, value: String)], stdin: Data) -> Data {
        var out = Data(domain.utf8)
        out.append(0)
        appendU32(&out, args.count)
        for arg in args {
            appendString(&out, arg)
        }
        appendU32(&out, env.count)
        for variable in env {
            appendString(&out, variable.name)
            appendString(&out, variable.value)
        }
        appendU64(&out, stdin.count)
        out.append(stdin)
        return out
    }

    public static func sha256Hex(args: [String], env: [(name: String, value: String)], stdin: Data) -> String {
        return ReceiptVerifier.sha256Hex(encode(args: args, env: env, stdin: stdin))
    }

    static func appendString(_ out: inout Data, _ value: String) {
        let bytes = Data(value.utf8)
        appendU32(&out, bytes.count)
        out.append(bytes)
    }

    /// Big-endian, most significant byte first.
    static func appendU32(_ out: inout Data, _ count: Int) {
        let value = UInt32(count)
        for shift in [24, 16, 8, 0] {
            out.append(UInt8(truncatingIfNeeded: value >> shift))
        }
    }

    /// Big-endian, most significant byte first.
    static func appendU64(_ out: inout Data, _ count: Int) {
        let value = UInt64(count)
        for shift in [56, 48, 40, 32, 24, 16, 8, 0] {
            out.append(UInt8(truncatingIfNeeded: value >> shift))
        }
    }
}

/// Lowercase hex, as node ids and hashes are written.
enum Hex {
    static let digits: [UInt8] = Array("0123456789abcdef".utf8)

    static func encode<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        var out: [UInt8] = []
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
