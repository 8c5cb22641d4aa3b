// The checked-in receipt vectors (tests/vectors/receipts.json) through the
// offline verifier, as tests/test_vectors.py runs them through Python's: every
// case's verdict and the name of each failed check, from the hex fields, the
// binary envelope and its proto3 JSON; the bare envelope check; the decoded
// bodies, hashes and input encodings of the valid cases; every optional check
// catching a mismatch; the input-hash known answers and the test keys.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { fromJson } from "@bufbuild/protobuf";
import { base64Decode } from "@bufbuild/protobuf/wire";
import * as ed from "@noble/ed25519";
import { sha256 } from "@noble/hashes/sha2.js";
import { bytesToHex, hexToBytes } from "@noble/hashes/utils.js";

import {
  RECEIPT_DOMAIN,
  ReceiptFormatError,
  checkSignature,
  encodeInput,
  envelopeToJson,
  inputSha256,
  parseEnvelope,
  receiptBodyToJson,
  signerNodeId,
  verifyReceipt,
} from "../src/browser.js";
import { newEnvelope } from "../src/envelope.js";
import { ReceiptBodySchema } from "../src/gen/plasm/v1/receipt_pb.js";
import { type JobInput } from "../src/input_hash.js";
import { type VectorCase, vectors } from "./repo.js";

const REQUIRED_CASES = [
  "valid",
  "valid_nonzero_exit",
  "valid_trap",
  "tampered_body",
  "tampered_signature",
  "wrong_key",
  "wrong_domain",
  "truncated_payload",
  "truncated_signature",
  "bad_public_key_length",
  "signer_mismatch",
  "malformed_payload",
];

function envelopeOf(c: VectorCase) {
  return newEnvelope({
    payload: hexToBytes(c.payload_hex),
    signature: hexToBytes(c.signature_hex),
    signerPublicKey: hexToBytes(c.signer_public_key_hex),
  });
}

function inputOf(c: VectorCase): JobInput {
  assert.ok(c.input);
  return { args: c.input.args, env: c.input.env, stdin: base64Decode(c.input.stdin_b64) };
}

/** The checks tests/test_vectors.py expects to fail, by expected_error. */
function expectedFailures(c: VectorCase): string[] {
  switch (c.expected_error) {
    case "":
      return [];
    case "bad_signature":
    case "wrong_domain":
    case "wrong_key":
    case "truncated":
      return ["signature"];
    case "signer_mismatch":
      return ["signer"];
    case "malformed":
      return c.expected_signature_valid ? ["decode"] : ["signature"];
    default:
      throw new Error(`unknown expected_error ${c.expected_error}`);
  }
}

test("the file has every required case once", () => {
  const names = vectors.cases.map((c) => c.name);
  assert.equal(new Set(names).size, names.length);
  for (const name of REQUIRED_CASES) assert.ok(names.includes(name), name);
  assert.equal(vectors.format, "plasm-receipt-test-vectors/1");
  assert.equal(vectors.receipt_domain, RECEIPT_DOMAIN);
  assert.match(vectors.warning, /THROWAWAY/);
});

test("the keys derive from their labels", () => {
  for (const key of vectors.keys) {
    const seed = sha256(new TextEncoder().encode(key.label));
    const publicKey = ed.getPublicKey(seed);
    assert.equal(bytesToHex(publicKey), key.public_key_hex);
    assert.equal(signerNodeId(publicKey), key.node_id);
  }
});

for (const c of vectors.cases) {
  describe(`case ${c.name}`, () => {
    test("the binary envelope holds exactly the three hex fields", () => {
      const env = parseEnvelope(base64Decode(c.envelope_b64));
      assert.equal(bytesToHex(env.payload), c.payload_hex);
      assert.equal(bytesToHex(env.signature), c.signature_hex);
      assert.equal(bytesToHex(env.signerPublicKey), c.signer_public_key_hex);
    });

    test("verifyReceipt gives the expected verdict and failed checks", () => {
      const result = verifyReceipt(envelopeOf(c));
      assert.equal(result.valid, c.expected_valid, JSON.stringify(result.checks));
      assert.equal(result.signerNodeId, c.expected_signer_node_id);
      const failed = result.checks.filter((k) => !k.passed).map((k) => k.name);
      assert.deepEqual(failed, expectedFailures(c), JSON.stringify(result.checks));
      assert.equal(result.checks[0]?.name, "signature");
      if (c.expected_valid || c.expected_error === "signer_mismatch") {
        assert.ok(result.body);
        assert.deepEqual(
          result.checks.map((k) => k.name),
          ["signature", "signer"],
        );
      } else {
        assert.equal(result.body, undefined);
      }
    });

    test("the same verdict from the binary envelope and from its proto3 JSON", () => {
      const binary = base64Decode(c.envelope_b64);
      const json = JSON.stringify(envelopeToJson(envelopeOf(c)), null, 2);
      const stored = JSON.stringify({ receipt: envelopeToJson(envelopeOf(c)) });
      const reference = verifyReceipt(envelopeOf(c));
      for (const form of [binary, json, new TextEncoder().encode(json), JSON.parse(json), stored]) {
        const result = verifyReceipt(form);
        assert.equal(result.valid, c.expected_valid);
        assert.deepEqual(result.checks, reference.checks);
      }
    });

    test("the bare envelope check gives expected_signature_valid", () => {
      assert.equal(checkSignature(envelopeOf(c)), c.expected_signature_valid);
      assert.equal(signerNodeId(envelopeOf(c).signerPublicKey), c.expected_signer_node_id);
    });
  });
}

for (const c of vectors.cases.filter((v) => v.expected_valid)) {
  describe(`valid case ${c.name} in depth`, () => {
    test("the decoded body is the case's proto3 JSON body", () => {
      const result = verifyReceipt(envelopeOf(c));
      assert.ok(result.body);
      assert.deepEqual(receiptBodyToJson(result.body), c.body);
      assert.ok(c.body);
      const fromCaseJson = fromJson(ReceiptBodySchema, c.body as never);
      assert.deepEqual(receiptBodyToJson(fromCaseJson), receiptBodyToJson(result.body));
      assert.equal(result.body.executorNodeId, c.expected_signer_node_id);
    });

    test("the input encoding and its hash", () => {
      assert.ok(c.input && c.body);
      const input = inputOf(c);
      assert.equal(bytesToHex(encodeInput(input)), c.input.input_encoding_hex);
      assert.equal(inputSha256(input), c.input.input_sha256);
      assert.equal(c.body["inputSha256"], c.input.input_sha256);
    });

    test("every optional check passes, in order, and each catches a mismatch", () => {
      assert.ok(c.stdout_b64 !== null && c.stderr_b64 !== null && c.module_b64 !== null);
      const stdout = base64Decode(c.stdout_b64);
      const stderr = base64Decode(c.stderr_b64);
      const module = base64Decode(c.module_b64);
      const input = inputOf(c);
      const all = {
        expectedExecutorNodeId: c.expected_signer_node_id,
        stdout,
        stderr,
        module,
        input,
      };
      const result = verifyReceipt(envelopeOf(c), all);
      assert.ok(result.valid, JSON.stringify(result.checks));
      assert.deepEqual(
        result.checks.map((k) => k.name),
        ["signature", "signer", "expected_executor", "stdout", "stderr", "module", "input"],
      );
      const bang = (b: Uint8Array) => new Uint8Array([...b, 0x21]);
      const wrong = [
        { stdout: bang(stdout) },
        { stderr: bang(stderr) },
        { module: bang(module) },
        { input: { ...input, args: [...(input.args ?? []), "x"] } },
        { expectedExecutorNodeId: "0".repeat(64) },
      ];
      for (const options of wrong) {
        const bad = verifyReceipt(envelopeOf(c), options);
        assert.equal(bad.valid, false, JSON.stringify(options));
        assert.equal(bad.checks.filter((k) => !k.passed).length, 1);
      }
    });
  });
}

describe("input-hash known answers", () => {
  for (const v of vectors.input_vectors) {
    test(v.name, () => {
      const input = { args: v.args, env: v.env, stdin: base64Decode(v.stdin_b64) };
      assert.equal(bytesToHex(encodeInput(input)), v.input_encoding_hex);
      assert.equal(inputSha256(input), v.input_sha256);
    });
  }
  test("pairwise distinct", () => {
    const hashes = vectors.input_vectors.map((v) => v.input_sha256);
    assert.equal(new Set(hashes).size, hashes.length);
  });
  test("env as plasm.v1.EnvVar and stdin as text hash the same as pairs and bytes", () => {
    const pairs = inputSha256({ args: ["a"], env: [["K", "V"]], stdin: new Uint8Array([0x78]) });
    assert.equal(inputSha256({ args: ["a"], env: [{ name: "K", value: "V" }], stdin: "x" }), pairs);
  });
});

describe("receipt files that are not receipts", () => {
  for (const [what, input] of [
    ["broken JSON", "{not json"],
    ["a JSON array", "[1, 2]"],
    ["a JSON envelope with a bad field", '{"payload": 5}'],
    ["bytes that are not a SignedEnvelope", new Uint8Array([0xff, 0xff, 0xff])],
  ] as const) {
    test(what, () => {
      assert.throws(() => verifyReceipt(input), ReceiptFormatError);
    });
  }
});
