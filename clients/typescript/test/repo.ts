// Where the repository's shared files are, from the compiled test (dist/test/)
// or its source (test/): walk up to the directory holding tests/vectors/.
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

function findRepoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "tests", "vectors", "receipts.json"))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error("tests/vectors/receipts.json not found above this test");
    dir = parent;
  }
}

export const REPO_ROOT = findRepoRoot();

export interface VectorCase {
  name: string;
  description: string;
  domain: string;
  payload_hex: string;
  signature_hex: string;
  signer_public_key_hex: string;
  envelope_b64: string;
  expected_valid: boolean;
  expected_error: string;
  expected_signature_valid: boolean;
  expected_signer_node_id: string;
  body: Record<string, unknown> | null;
  input: {
    args: string[];
    env: [string, string][];
    stdin_b64: string;
    input_sha256: string;
    input_encoding_hex: string;
  } | null;
  module_b64: string | null;
  stdout_b64: string | null;
  stderr_b64: string | null;
}

export interface InputVector {
  name: string;
  args: string[];
  env: [string, string][];
  stdin_b64: string;
  input_sha256: string;
  input_encoding_hex: string;
}

export interface Vectors {
  format: string;
  warning: string;
  receipt_domain: string;
  keys: { label: string; public_key_hex: string; node_id: string }[];
  cases: VectorCase[];
  input_vectors: InputVector[];
}

export const vectors: Vectors = JSON.parse(
  readFileSync(join(REPO_ROOT, "tests", "vectors", "receipts.json"), "utf-8"),
) as Vectors;
