#!/usr/bin/env node
// Regenerate src/gen/ from proto/ with buf and protoc-gen-es.
//
//   node scripts/generate.mjs          # rewrite src/gen/
//   node scripts/generate.mjs --check  # exit 1 if src/gen/ is out of date
//
// Exit status: 0 done/clean, 1 drift found by --check, 2 error (no buf, ...).
// This script owns src/gen/ entirely: files it no longer produces are removed.
// It generates into a temporary directory first; --check compares that, file
// by file and byte for byte, with the committed tree (like scripts/generate.py).
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, cpSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const PACKAGE = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const REPO = resolve(PACKAGE, "..", "..");
const GEN = join(PACKAGE, "src", "gen");
const TEMPLATE = join(PACKAGE, "buf.gen.yaml");
const BUF = join(REPO, "node_modules", ".bin", "buf");
const PLUGIN = join(PACKAGE, "node_modules", ".bin", "protoc-gen-es");

function fail(message) {
  console.error(`generate: error: ${message}`);
  process.exit(2);
}

function files(root) {
  const out = new Map();
  if (!existsSync(root)) return out;
  const walk = (dir) => {
    for (const name of readdirSync(dir).sort()) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path);
      else out.set(relative(root, path), path);
    }
  };
  walk(root);
  return out;
}

const check = process.argv.includes("--check");
if (process.argv.slice(2).some((a) => a !== "--check")) {
  console.error("usage: node scripts/generate.mjs [--check]");
  process.exit(2);
}
if (!existsSync(BUF)) fail(`${BUF} not found: run scripts/install-deps.sh (npm install at the repo root)`);
if (!existsSync(PLUGIN)) fail(`${PLUGIN} not found: run npm ci --prefix clients/typescript`);

const stage = mkdtempSync(join(tmpdir(), "plasm-ts-gen-"));
try {
  try {
    // Run from the repo root so buf uses its buf.yaml (module proto/).
    execFileSync(BUF, ["generate", "--template", TEMPLATE, "-o", stage], {
      cwd: REPO,
      stdio: ["ignore", "inherit", "inherit"],
    });
  } catch (err) {
    fail(`buf generate failed (${err.message})`);
  }
  const fresh = files(join(stage, "gen"));
  if (fresh.size === 0) fail("buf generate produced nothing");
  const committed = files(GEN);
  if (check) {
    const drift = [];
    for (const [name, path] of fresh) {
      const old = committed.get(name);
      if (old === undefined) drift.push(`missing: src/gen/${name}`);
      else if (!readFileSync(old).equals(readFileSync(path))) drift.push(`differs: src/gen/${name}`);
    }
    for (const name of committed.keys()) {
      if (!fresh.has(name)) drift.push(`stale: src/gen/${name}`);
    }
    if (drift.length > 0) {
      console.error(drift.join("\n"));
      console.error("src/gen/ is out of date with proto/: run npm run generate --prefix clients/typescript");
      process.exit(1);
    }
    console.log(`generate: src/gen/ matches proto/ (${fresh.size} files)`);
  } else {
    rmSync(GEN, { recursive: true, force: true });
    cpSync(join(stage, "gen"), GEN, { recursive: true });
    console.log(`generate: wrote ${fresh.size} files to src/gen/`);
  }
} finally {
  rmSync(stage, { recursive: true, force: true });
}
