// Offline receipt verification, with no daemon and nothing trusted.
//
// The same checks as the Python verifier (plasm_grpc.api.verify), the PHP
// ReceiptVerifier, `plasm verify` and the Verify RPC, in the same order and
// with the same names:
//
//  1. signature: the public key is 32 bytes, the signature 64, and Ed25519
//     holds over "plasm/receipt/v1" 0x00 payload, on the payload bytes exactly
//     as received. Nothing else is looked at if it fails.
//  2. decode: only then is the payload decoded as a ReceiptBody.
//  3. well_formed, version: hashes and node ids are 64 lowercase hex, the
//     outcome is known, version is 1 (reported only when they fail).
//  4. signer: body.executor_node_id == hex(sha256(signer public key)).
//  5. expected_executor, stdout, stderr, module, input: only for what the
//     caller passes.
//
// Browser-safe (the web console bundles it through src/browser.ts): no Node
// module, no Buffer; bytes are Uint8Array.
import { fromBinary } from "@bufbuild/protobuf";
import { sha256 } from "@noble/hashes/sha2.js";
import { bytesToHex } from "@noble/hashes/utils.js";

import { type EnvelopeInput, RECEIPT_DOMAIN, parseEnvelope, signatureProblem, signerNodeId } from "./envelope.js";
import type { SignedEnvelope } from "./gen/plasm/v1/envelope_pb.js";
import { Outcome, type ReceiptBody, ReceiptBodySchema } from "./gen/plasm/v1/receipt_pb.js";
import { type JobInput, inputSha256 } from "./input_hash.js";

export const RECEIPT_VERSION = 1;

/** One verification step and its result, shown to the user as is. */
export interface Check {
  /** "signature", "decode", "well_formed", "version", "signer", "expected_executor", "stdout", "stderr", "module" or "input". */
  readonly name: string;
  readonly passed: boolean;
  readonly detail: string;
}

export interface VerifyResult {
  /** True when there is at least one check and every check passed. */
  readonly valid: boolean;
  readonly checks: readonly Check[];
  /** The decoded body; present once the signature holds and the payload decodes. */
  readonly body?: ReceiptBody;
  /** hex(sha256(signer public key)); "" when the key is not 32 bytes. */
  readonly signerNodeId: string;
}

export interface VerifyOptions {
  /** The node you expected to run the job (64 hex); the signer must be it. */
  readonly expectedExecutorNodeId?: string;
  /** Bytes you hold, checked against the receipt's hashes. */
  readonly stdout?: Uint8Array;
  readonly stderr?: Uint8Array;
  readonly module?: Uint8Array;
  /** What you sent (args, env in order, stdin), checked against input_sha256; a JobManifest fits. */
  readonly input?: JobInput;
}

const HEX64 = /^[0-9a-f]{64}$/;

/**
 * Verify a receipt offline. `envelope` is a SignedEnvelope, or a receipt in any
 * form parseEnvelope reads (proto3 JSON text, bytes or object; binary);
 * a receipt that is neither throws ReceiptFormatError.
 */
export function verifyReceipt(envelope: EnvelopeInput, options: VerifyOptions = {}): VerifyResult {
  const env: SignedEnvelope = parseEnvelope(envelope);
  const checks: Check[] = [];
  const add = (name: string, passed: boolean, detail: string): void => {
    checks.push({ name, passed, detail });
  };
  const signer = signerNodeId(env.signerPublicKey);
  const problem = signatureProblem(env, RECEIPT_DOMAIN);
  if (problem !== null) {
    add("signature", false, problem);
    return { valid: false, checks, signerNodeId: signer };
  }
  add("signature", true, `valid Ed25519 signature under '${RECEIPT_DOMAIN}'`);
  let body: ReceiptBody;
  try {
    body = fromBinary(ReceiptBodySchema, env.payload);
  } catch (err) {
    add("decode", false, `receipt payload is not a ReceiptBody: ${(err as Error).message}`);
    return { valid: false, checks, signerNodeId: signer };
  }
  const malformed = malformedBecause(body);
  if (malformed !== null) add("well_formed", false, malformed);
  if (body.version !== RECEIPT_VERSION) {
    add("version", false, `receipt version ${body.version}, expected ${RECEIPT_VERSION}`);
  }
  if (body.executorNodeId === signer) {
    add("signer", true, `signed by the executor ${signer}`);
  } else {
    add("signer", false, `signed by ${signer} but names executor ${body.executorNodeId || "(none)"}`);
  }
  const expected = options.expectedExecutorNodeId;
  if (expected) {
    add("expected_executor", signer === expected, `signer ${signer}, expected ${expected}`);
  }
  if (options.stdout !== undefined) checks.push(hashCheck("stdout", body.stdoutSha256, options.stdout));
  if (options.stderr !== undefined) checks.push(hashCheck("stderr", body.stderrSha256, options.stderr));
  if (options.module !== undefined) checks.push(hashCheck("module", body.moduleSha256, options.module));
  if (options.input !== undefined) {
    const actual = inputSha256(options.input);
    const matches = actual === body.inputSha256;
    add("input", matches, `input sha256 ${actual}` + (matches ? " matches" : `, receipt says ${body.inputSha256}`));
  }
  return { valid: checks.every((c) => c.passed), checks, body, signerNodeId: signer };
}

/**
 * A Submit result (plasm.v1.JobResult) checked against the stdout and stderr it
 * carries and, when given, the module and input you sent.
 */
export function verifyJobResult(
  result: { readonly receipt?: SignedEnvelope; readonly stdout: Uint8Array; readonly stderr: Uint8Array },
  options: Omit<VerifyOptions, "stdout" | "stderr"> = {},
): VerifyResult {
  if (result.receipt === undefined) {
    return {
      valid: false,
      checks: [{ name: "signature", passed: false, detail: "the result carries no receipt" }],
      signerNodeId: "",
    };
  }
  return verifyReceipt(result.receipt, { ...options, stdout: result.stdout, stderr: result.stderr });
}

/** Why the body is malformed, in the Python verifier's words (api/codec.py receipt_from_pb), or null. */
function malformedBecause(body: ReceiptBody): string | null {
  if (Outcome[body.outcome] === undefined) return `receipt has unknown outcome ${body.outcome}`;
  const hex: [string, string][] = [
    ["module_sha256", body.moduleSha256],
    ["input_sha256", body.inputSha256],
    ["stdout_sha256", body.stdoutSha256],
    ["stderr_sha256", body.stderrSha256],
    ["executor_node_id", body.executorNodeId],
  ];
  if (body.requesterNodeId !== "") hex.push(["requester_node_id", body.requesterNodeId]);
  for (const [name, value] of hex) {
    if (!HEX64.test(value)) {
      return `receipt body is malformed: ${name} must be 64 lowercase hex characters, got '${value.slice(0, 78)}'`;
    }
  }
  return null;
}

function hashCheck(name: string, expectedHex: string, data: Uint8Array): Check {
  const actual = bytesToHex(sha256(data));
  return actual === expectedHex
    ? { name, passed: true, detail: `sha256 ${actual} matches the receipt` }
    : { name, passed: false, detail: `sha256 ${actual} but the receipt says ${expectedHex}` };
}
