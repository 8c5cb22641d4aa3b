// The shared receipt vectors (tests/vectors/README.md, "How a client uses it"),
// which the Python and PHP verifiers pass too. Run with `swift test`.

import Crypto
import Foundation
import SwiftProtobuf
import XCTest

@testable import PlasmClient

final class VectorTests: XCTestCase {
    /// tests/vectors/receipts.json in the repository, found from this file's
    /// own path: clients/swift/Tests/PlasmClientTests/VectorTests.swift.
    static let vectorsURL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()  // Tests/PlasmClientTests
        .deletingLastPathComponent()  // Tests
        .deletingLastPathComponent()  // clients/swift
        .deletingLastPathComponent()  // clients
        .deletingLastPathComponent()  // the repository
        .appendingPathComponent("tests/vectors/receipts.json")

    /// The first check each broken case must fail. The signature is checked
    /// before the payload is decoded, and the decoded body before the signer.
    static let firstFailedCheck: [String: String] = [
        "tampered_body": "signature",
        "tampered_signature": "signature",
        "wrong_key": "signature",
        "wrong_domain": "signature",
        "truncated_payload": "signature",
        "truncated_signature": "signature",
        "bad_public_key_length": "signature",
        "signer_mismatch": "signer",
        "malformed_payload": "decode",
    ]

    func testFileFormat() throws {
        let vectors = try loadVectors()
        XCTAssertEqual(try string(vectors, "format"), "plasm-receipt-test-vectors/1")
        XCTAssertEqual(try string(vectors, "receipt_domain"), ReceiptVerifier.receiptDomain)
        XCTAssertEqual(InputHash.domain + "\0", "plasm/input/v1\0")
    }

    func testSigningInputIsDomainZeroPayload() {
        let payload = Data([1, 2, 3])
        let expected = Data("plasm/receipt/v1".utf8) + Data([0, 1, 2, 3])
        XCTAssertEqual(ReceiptVerifier.signingInput(domain: "plasm/receipt/v1", payload: payload), expected)
    }

    /// Each key's seed is SHA-256 of its public label; its node id is SHA-256
    /// of its raw public key.
    func testKeys() throws {
        for key in try objects(try loadVectors(), "keys") {
            let label = try string(key, "label")
            let seed = Data(SHA256.hash(data: Data(label.utf8)))
            let privateKey = try Curve25519.Signing.PrivateKey(rawRepresentation: seed)
            let publicKey = privateKey.publicKey.rawRepresentation
            XCTAssertEqual(Hex.encode(publicKey), try string(key, "public_key_hex"), label)
            XCTAssertEqual(ReceiptVerifier.nodeID(publicKey: publicKey), try string(key, "node_id"), label)
        }
    }

    func testReceiptCases() throws {
        let cases = try objects(try loadVectors(), "cases")
        XCTAssertGreaterThanOrEqual(cases.count, 12)
        for vector in cases {
            let name = try string(vector, "name")
            let envelope = try envelopeOf(vector)
            let expectedValid = try bool(vector, "expected_valid")
            let expectedSigner = try string(vector, "expected_signer_node_id")

            let result = ReceiptVerifier.verify(envelope)
            XCTAssertEqual(result.valid, expectedValid, "\(name): \(result.checks)")
            XCTAssertEqual(result.signerNodeID, expectedSigner, name)
            XCTAssertEqual(
                ReceiptVerifier.signatureIsValid(envelope),
                try bool(vector, "expected_signature_valid"),
                name
            )
            XCTAssertEqual(ReceiptVerifier.nodeID(publicKey: envelope.signerPublicKey) ?? "", expectedSigner, name)

            if expectedValid {
                try checkValidCase(vector, envelope: envelope, result: result)
            } else {
                let expectedFailure = Self.firstFailedCheck[name]
                XCTAssertNotNil(expectedFailure, "\(name): add it to firstFailedCheck")
                XCTAssertEqual(result.firstFailure?.name, expectedFailure, "\(name): \(result.checks)")
                if expectedFailure == "signature" || expectedFailure == "decode" {
                    XCTAssertNil(result.body, name)
                }
            }
        }
    }

    /// A valid receipt decodes to the vector's body, binds the hashes of the
    /// bytes shipped with it and of its input, and passes every optional check;
    /// a wrong stdout, executor or input fails the matching check.
    func checkValidCase(
        _ vector: [String: Any],
        envelope: Plasm_V1_SignedEnvelope,
        result: ReceiptVerification
    ) throws {
        let name = try string(vector, "name")
        let body = try XCTUnwrap(result.body, name)
        let bodyJSON = try JSONSerialization.data(withJSONObject: try object(vector, "body"))
        let expectedBody = try Plasm_V1_ReceiptBody(jsonString: String(decoding: bodyJSON, as: UTF8.self))
        XCTAssertEqual(body, expectedBody, name)

        let module = try base64(vector, "module_b64")
        let stdout = try base64(vector, "stdout_b64")
        let stderr = try base64(vector, "stderr_b64")
        XCTAssertEqual(ReceiptVerifier.sha256Hex(module), body.moduleSha256, name)
        XCTAssertEqual(ReceiptVerifier.sha256Hex(stdout), body.stdoutSha256, name)
        XCTAssertEqual(ReceiptVerifier.sha256Hex(stderr), body.stderrSha256, name)

        let inputVector = try object(vector, "input")
        let input = try receiptInput(inputVector)
        let encoding = InputHash.encode(args: input.args, env: input.env, stdin: input.stdin)
        XCTAssertEqual(encoding, try hexBytes(try string(inputVector, "input_encoding_hex")), name)
        let inputHash = InputHash.sha256Hex(args: input.args, env: input.env, stdin: input.stdin)
        XCTAssertEqual(inputHash, try string(inputVector, "input_sha256"), name)
        XCTAssertEqual(inputHash, body.inputSha256, name)

        let signer = result.signerNodeID
        let full = ReceiptVerifier.verify(
            envelope,
            expectedExecutorNodeID: signer,
            stdout: stdout,
            stderr: stderr,
            module: module,
            input: input
        )
        XCTAssertTrue(full.valid, "\(name): \(full.checks)")
        XCTAssertEqual(
            full.checks.map { $0.name },
            ["signature", "signer", "expected_executor", "stdout", "stderr", "module", "input"],
            name
        )

        let wrongStdout = ReceiptVerifier.verify(envelope, stdout: stdout + Data([0x0a]))
        XCTAssertEqual(wrongStdout.firstFailure?.name, "stdout", name)
        let otherNode = String(repeating: "0", count: 64)
        let wrongExecutor = ReceiptVerifier.verify(envelope, expectedExecutorNodeID: otherNode)
        XCTAssertEqual(wrongExecutor.firstFailure?.name, "expected_executor", name)
        var moreArgs = input
        moreArgs.args.append("extra")
        let wrongInput = ReceiptVerifier.verify(envelope, input: moreArgs)
        XCTAssertEqual(wrongInput.firstFailure?.name, "input", name)
    }

    func testInputVectors() throws {
        let vectors = try objects(try loadVectors(), "input_vectors")
        XCTAssertFalse(vectors.isEmpty)
        for vector in vectors {
            let name = try string(vector, "name")
            let input = try receiptInput(vector)
            let encoding = InputHash.encode(args: input.args, env: input.env, stdin: input.stdin)
            XCTAssertEqual(encoding, try hexBytes(try string(vector, "input_encoding_hex")), name)
            XCTAssertEqual(
                InputHash.sha256Hex(args: input.args, env: input.env, stdin: input.stdin),
                try string(vector, "input_sha256"),
                name
            )
        }
    }

    // MARK: - Reading the vectors

    enum VectorError: Error {
        case missing(String)
        case badHex(String)
        case badBase64(String)
        case badEnvPair(String)
    }

    func loadVectors() throws -> [String: Any] {
        let data = try Data(contentsOf: Self.vectorsURL)
        let json = try JSONSerialization.jsonObject(with: data)
        return try XCTUnwrap(json as? [String: Any], "\(Self.vectorsURL.path) is not a JSON object")
    }

    /// The envelope from its serialized form, checked against the three hex fields.
    func envelopeOf(_ vector: [String: Any]) throws -> Plasm_V1_SignedEnvelope {
        let name = try string(vector, "name")
        let wire = try base64(vector, "envelope_b64")
        let envelope = try Plasm_V1_SignedEnvelope(serializedBytes: wire)
        var fromHex = Plasm_V1_SignedEnvelope()
        fromHex.payload = try hexBytes(try string(vector, "payload_hex"))
        fromHex.signature = try hexBytes(try string(vector, "signature_hex"))
        fromHex.signerPublicKey = try hexBytes(try string(vector, "signer_public_key_hex"))
        XCTAssertEqual(envelope, fromHex, "\(name): envelope_b64 and the hex fields differ")
        return envelope
    }

    func receiptInput(_ vector: [String: Any]) throws -> ReceiptInput {
        let args = try XCTUnwrap(vector["args"] as? [String], "args")
        let pairs = try XCTUnwrap(vector["env"] as? [[String]], "env")
        var env: [(name: String, value: String)] = []
        for pair in pairs {
            guard pair.count == 2 else {
                throw VectorError.badEnvPair("\(pair)")
            }
            env.append((name: pair[0], value: pair[1]))
        }
        return ReceiptInput(args: args, env: env, stdin: try base64(vector, "stdin_b64"))
    }

    func string(_ object: [String: Any], _ key: String) throws -> String {
        guard let value = object[key] as? String else {
            throw VectorError.missing(key)
        }
        return value
    }

    func bool(_ object: [String: Any], _ key: String) throws -> Bool {
        guard let value = object[key] as? Bool else {
            throw VectorError.missing(key)
        }
        return value
    }

    func object(_ parent: [String: Any], _ key: String) throws -> [String: Any] {
        guard let value = parent[key] as? [String: Any] else {
            throw VectorError.missing(key)
        }
        return value
    }

    func objects(_ parent: [String: Any], _ key: String) throws -> [[String: Any]] {
        guard let value = parent[key] as? [[String: Any]] else {
            throw VectorError.missing(key)
        }
        return value
    }

    func base64(_ object: [String: Any], _ key: String) throws -> Data {
        let text = try string(object, key)
        guard let data = Data(base64Encoded: text) else {
            throw VectorError.badBase64(key)
        }
        return data
    }

    func hexBytes(_ hex: String) throws -> Data {
        let digits = Array(hex.utf8)
        guard digits.count % 2 == 0 else {
            throw VectorError.badHex(hex)
        }
        var out = Data()
        var index = 0
        while index < digits.count {
            guard let high = nibble(digits[index]), let low = nibble(digits[index + 1]) else {
                throw VectorError.badHex(hex)
            }
            out.append((high << 4) | low)
            index += 2
        }
        return out
    }

    func nibble(_ digit: UInt8) -> UInt8? {
        switch digit {
        case UInt8(ascii: "0")...UInt8(ascii: "9"):
            return digit - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"):
            return digit - UInt8(ascii: "a") + 10
        default:
            return nil
        }
    }
}
