// The browser bundle (npm run build:browser: dist/plasm-verify.browser.js)
// gives the same checks as the module it is built from on every vector, and
// imports nothing: a browser loads it as one file.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { base64Decode } from "@bufbuild/protobuf/wire";

import { verifyReceipt } from "../src/verify.js";
import { vectors } from "./repo.js";

const BUNDLE = new URL("../plasm-verify.browser.js", import.meta.url);

type BundleVerify = (envelope: unknown) => { valid: boolean; checks: unknown[]; signerNodeId: string };

test("the bundle is self-contained and agrees with verify.ts on every vector", async () => {
  assert.ok(existsSync(BUNDLE), "run npm run build:browser first");
  const source = readFileSync(fileURLToPath(BUNDLE), "utf-8");
  assert.doesNotMatch(source, /^\s*import\s/m, "the bundle imports another file");
  assert.doesNotMatch(source, /\brequire\(|["']node:/, "the bundle refers to Node");
  const bundle = (await import(BUNDLE.href)) as { verifyReceipt: BundleVerify };
  for (const c of vectors.cases) {
    const raw = base64Decode(c.envelope_b64);
    const fromBundle = bundle.verifyReceipt(raw);
    const fromModule = verifyReceipt(raw);
    assert.equal(fromBundle.valid, c.expected_valid, c.name);
    assert.deepEqual(fromBundle.checks, fromModule.checks, c.name);
    assert.equal(fromBundle.signerNodeId, fromModule.signerNodeId, c.name);
  }
});
