// Signed envelopes and the forms a receipt travels in (DESIGN.md, "Signed
// envelopes"): a plasm.v1.SignedEnvelope, binary or in proto3 JSON (what
// `plasm receipt JOB_ID --out receipt.json` writes), or a StoredReceipt /
// GetReceipt response in proto3 JSON whose "receipt" holds the envelope.
//
// Browser-safe: nothing here imports a Node module or uses Buffer, so the
// console bundles it (src/browser.ts) next to the verifier.
import { create, fromBinary, fromJson, isMessage, toJson, type JsonValue } from "@bufbuild/protobuf";
import * as ed from "@noble/ed25519";
import { sha256, sha512 } from "@noble/hashes/sha2.js";
import { bytesToHex } from "@noble/hashes/utils.js";

import { type SignedEnvelope, SignedEnvelopeSchema } from "./gen/plasm/v1/envelope_pb.js";
import { type ReceiptBody, ReceiptBodySchema } from "./gen/plasm/v1/receipt_pb.js";

// @noble/ed25519 is pure JavaScript (audited, no dependencies), so the same
// code verifies in Node and in any browser: WebCrypto's Ed25519 is missing
// from older browsers and from Node 20 without a flag in some builds, and an
// async-only API would make the verifier async for no reason. Its synchronous
// verify needs a SHA-512, which @noble/hashes provides.
ed.hashes.sha512 = sha512;

export const RECEIPT_DOMAIN = "plasm/receipt/v1";
export const PUBLIC_KEY_BYTES = 32;
export const SIGNATURE_BYTES = 64;

/** A receipt that is neither a SignedEnvelope in proto3 JSON nor one in binary. */
export class ReceiptFormatError extends Error {
  override name = "ReceiptFormatError";
}

/** Anything parseEnvelope accepts. */
export type EnvelopeInput = SignedEnvelope | Uint8Array | ArrayBuffer | string | { [key: string]: JsonValue };

const utf8 = new TextEncoder();

/** `domain || 0x00 || payload`, the bytes an envelope's signature covers. */
export function signingInput(domain: string, payload: Uint8Array): Uint8Array {
  // Domains are ASCII without NUL (core/envelope.py).
  if (domain === "" || !/^[\x01-\x7f]*$/.test(domain)) {
    throw new RangeError("a signing domain is non-empty ASCII without NUL");
  }
  const prefix = utf8.encode(domain);
  const out = new Uint8Array(prefix.length + 1 + payload.length);
  out.set(prefix, 0);
  out.set(payload, prefix.length + 1);
  return out;
}

/** Lowercase hex SHA-256 of a 32-byte public key; "" when it is not 32 bytes. */
export function signerNodeId(publicKey: Uint8Array): string {
  return publicKey.length === PUBLIC_KEY_BYTES ? bytesToHex(sha256(publicKey)) : "";
}

/**
 * Why the envelope's signature does not hold under `domain`, or null when it
 * does: the key must be 32 bytes, the signature 64, and Ed25519 must verify
 * over domain || 0x00 || payload, on the payload bytes exactly as received.
 * The messages are the Python verifier's (core/envelope.py, core/ids.py).
 */
export function signatureProblem(envelope: SignedEnvelope, domain: string = RECEIPT_DOMAIN): string | null {
  const key = envelope.signerPublicKey;
  if (key.length !== PUBLIC_KEY_BYTES) {
    return `an Ed25519 public key is ${PUBLIC_KEY_BYTES} bytes, got ${key.length}`;
  }
  if (envelope.signature.length !== SIGNATURE_BYTES) {
    return `signature must be ${SIGNATURE_BYTES} bytes, got ${envelope.signature.length}`;
  }
  let ok: boolean;
  try {
    // zip215: false is RFC 8032's stricter rule, what OpenSSL (Python's
    // cryptography) and libsodium (PHP) apply, so no signature passes here
    // that they refuse.
    ok = ed.verify(envelope.signature, signingInput(domain, envelope.payload), key, { zip215: false });
  } catch {
    ok = false;
  }
  return ok ? null : `signature does not verify under domain '${domain}'`;
}

/** The bare envelope check: true when the signature holds under `domain`. */
export function checkSignature(envelope: SignedEnvelope, domain: string = RECEIPT_DOMAIN): boolean {
  return signatureProblem(envelope, domain) === null;
}

export function newEnvelope(fields: { payload: Uint8Array; signature: Uint8Array; signerPublicKey: Uint8Array }): SignedEnvelope {
  return create(SignedEnvelopeSchema, fields);
}

/** A SignedEnvelope from proto3 JSON: the envelope itself or an object whose "receipt" is one. */
export function envelopeFromJson(document: JsonValue): SignedEnvelope {
  let value: JsonValue = document;
  // StoredReceipt, GetReceiptResponse and `plasm receipt --json` wrap the envelope.
  for (let depth = 0; depth < 2 && isObject(value) && "receipt" in value; depth++) {
    value = value["receipt"] as JsonValue;
  }
  if (!isObject(value)) {
    throw new ReceiptFormatError("a receipt in JSON is an object (a plasm.v1.SignedEnvelope)");
  }
  try {
    return fromJson(SignedEnvelopeSchema, value);
  } catch (err) {
    throw new ReceiptFormatError(`not a SignedEnvelope: ${(err as Error).message}`);
  }
}

/** proto3 JSON of an envelope (base64 bytes), as `plasm receipt --out` writes it. */
export function envelopeToJson(envelope: SignedEnvelope): JsonValue {
  return toJson(SignedEnvelopeSchema, envelope);
}

/** proto3 JSON of a receipt body (lowerCamelCase, 64-bit integers as strings, enums by name). */
export function receiptBodyToJson(body: ReceiptBody, options: { emitDefaults?: boolean } = {}): JsonValue {
  return toJson(ReceiptBodySchema, body, { alwaysEmitImplicit: options.emitDefaults ?? false });
}

/**
 * A receipt in any form it travels in: a SignedEnvelope message; proto3 JSON
 * as text, bytes or a parsed object (the envelope, or a StoredReceipt whose
 * "receipt" is one); or a binary SignedEnvelope. Like `plasm verify FILE`,
 * bytes that start with "{" (after white space) are read as JSON.
 * Throws ReceiptFormatError for anything else.
 */
export function parseEnvelope(input: EnvelopeInput): SignedEnvelope {
  if (isMessage(input, SignedEnvelopeSchema)) return input;
  if (typeof input === "string") return envelopeFromJson(parseJsonText(input));
  if (input instanceof ArrayBuffer) return parseEnvelope(new Uint8Array(input));
  if (input instanceof Uint8Array) {
    const first = input.findIndex((b) => b !== 0x20 && b !== 0x09 && b !== 0x0a && b !== 0x0d);
    if (first >= 0 && input[first] === 0x7b) {
      let text: string;
      try {
        text = new TextDecoder("utf-8", { fatal: true }).decode(input);
      } catch {
        throw new ReceiptFormatError("the receipt starts like JSON but is not UTF-8");
      }
      return envelopeFromJson(parseJsonText(text));
    }
    try {
      return fromBinary(SignedEnvelopeSchema, input);
    } catch (err) {
      throw new ReceiptFormatError(`neither JSON nor a binary SignedEnvelope: ${(err as Error).message}`);
    }
  }
  return envelopeFromJson(input);
}

function parseJsonText(text: string): JsonValue {
  try {
    return JSON.parse(text) as JsonValue;
  } catch (err) {
    throw new ReceiptFormatError(`not valid JSON: ${(err as Error).message}`);
  }
}

function isObject(value: JsonValue): value is { [key: string]: JsonValue } {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
