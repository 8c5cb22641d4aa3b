// The canonical encoding of a job's input, which a receipt's input_sha256
// covers (docs/receipts.md, "The input hash"; Python: core/input_hash.py):
//
//   "plasm/input/v1" 0x00
//   u32be(len(args))  then for each arg:  u32be(len(utf8)) utf8
//   u32be(len(env))   then for each var:  u32be(len(name)) name u32be(len(value)) value
//   u64be(len(stdin)) stdin
//
// All strings are UTF-8; env keeps the order the client gave.
// Browser-safe: no Node modules, only Uint8Array and TextEncoder.
import { sha256 } from "@noble/hashes/sha2.js";
import { bytesToHex } from "@noble/hashes/utils.js";

const INPUT_DOMAIN = "plasm/input/v1\u0000";

/** An environment variable as a [name, value] pair or as a plasm.v1.EnvVar. */
export type EnvEntry = readonly [string, string] | { readonly name: string; readonly value: string };

/**
 * What a client sent with a job. A plasm.v1.JobManifest fits this shape too,
 * so a manifest can be passed wherever a JobInput is asked for.
 */
export interface JobInput {
  readonly args?: readonly string[];
  readonly env?: readonly EnvEntry[];
  /** Raw bytes, or text (sent as its UTF-8 bytes). */
  readonly stdin?: Uint8Array | string;
}

const utf8 = new TextEncoder();

export function envPair(entry: EnvEntry): [string, string] {
  return Array.isArray(entry)
    ? [entry[0], entry[1]]
    : [(entry as { name: string }).name, (entry as { value: string }).value];
}

export function stdinBytes(stdin: Uint8Array | string | undefined): Uint8Array {
  if (stdin === undefined) return new Uint8Array(0);
  return typeof stdin === "string" ? utf8.encode(stdin) : stdin;
}

export function encodeInput(input: JobInput): Uint8Array {
  const parts: Uint8Array[] = [utf8.encode(INPUT_DOMAIN)];
  const u32 = (n: number): Uint8Array => {
    const out = new Uint8Array(4);
    new DataView(out.buffer).setUint32(0, n, false);
    return out;
  };
  const string = (value: string): void => {
    const encoded = utf8.encode(value);
    parts.push(u32(encoded.length), encoded);
  };
  const args = input.args ?? [];
  parts.push(u32(args.length));
  args.forEach(string);
  const env = (input.env ?? []).map(envPair);
  parts.push(u32(env.length));
  for (const [name, value] of env) {
    string(name);
    string(value);
  }
  const stdin = stdinBytes(input.stdin);
  const length = new Uint8Array(8);
  new DataView(length.buffer).setBigUint64(0, BigInt(stdin.length), false);
  parts.push(length, stdin);
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** Lowercase hex SHA-256 of encodeInput(input). */
export function inputSha256(input: JobInput): string {
  return bytesToHex(sha256(encodeInput(input)));
}
