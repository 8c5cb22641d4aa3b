// Submit hello.wasm to a Plasm node, print its output, and check the signed
// receipt here, offline, without asking any node whether it is genuine.
//
//   npm run build --prefix clients/typescript
//   node clients/typescript/dist/examples/remote_test.js [path/to/hello.wasm]
//
// PLASM_ADDR: the node ("127.0.0.1:50151" by default; "unix:/path/to.sock" works too).
// PLASM_EXPECT_EXECUTOR: optional node id (64 hex) the job must have run on.
// Exits 0 when everything checked out, 1 otherwise.
import { readFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import {
  type Check,
  DEFAULT_TARGET,
  Outcome,
  PlasmClient,
  PlasmError,
  RECEIPT_DOMAIN,
  type VerifyResult,
  newEnvelope,
  verifyJobResult,
  verifyReceipt,
} from "../src/index.js";

const GREETING = "Hello, World";

function line(check: Check): string {
  return `  ${check.name.padEnd(17)} ${check.passed ? "ok  " : "FAIL"}  ${check.detail}`;
}

function show(result: VerifyResult): void {
  for (const check of result.checks) console.log(line(check));
}

function defaultModule(): string {
  // dist/examples/ or examples/ inside clients/typescript; the repo's examples/build/ above.
  let dir = dirname(fileURLToPath(import.meta.url));
  while (basename(dir) !== "typescript" && dirname(dir) !== dir) dir = dirname(dir);
  return join(dir, "..", "..", "examples", "build", "hello.wasm");
}

async function main(): Promise<boolean> {
  const target = process.env["PLASM_ADDR"] || DEFAULT_TARGET;
  const modulePath = process.argv[2] ?? defaultModule();
  let module: Uint8Array;
  try {
    module = new Uint8Array(readFileSync(modulePath));
  } catch {
    console.error(`cannot read ${modulePath} (build it with scripts/build-examples.sh)`);
    return false;
  }
  const args = [basename(modulePath)];
  const expected = process.env["PLASM_EXPECT_EXECUTOR"] || undefined;

  const client = new PlasmClient(target);
  try {
    let nodeId: string;
    let response;
    try {
      const node = await client.getNodeInfo();
      nodeId = node.nodeId;
      console.log(`node       ${target}: ${node.nodeId} (plasmd ${node.version})`);
      response = await client.submit(module, { args, stdin: GREETING });
    } catch (err) {
      if (!(err instanceof PlasmError)) throw err;
      console.error(`call to ${target} failed: ${err.message}`);
      return false;
    }
    const result = response.result;
    if (result === undefined) {
      console.error("Submit answered without a result");
      return false;
    }
    const stdout = new TextDecoder().decode(result.stdout);
    console.log(`job        ${result.jobId}`);
    console.log(`outcome    OUTCOME_${Outcome[result.outcome]}, exit code ${result.exitCode}`);
    console.log(`stdin      ${JSON.stringify(GREETING)}`);
    console.log(`stdout     ${JSON.stringify(stdout)}`);

    // The receipt, checked here with @noble/ed25519: nothing below asks a node.
    const verification = verifyJobResult(result, {
      module,
      input: { args, stdin: GREETING },
      ...(expected !== undefined ? { expectedExecutorNodeId: expected } : {}),
    });
    console.log(`\nreceipt checked offline (Ed25519 over "${RECEIPT_DOMAIN}\\0" + payload, then the hashes):`);
    show(verification);
    const where = verification.signerNodeId === nodeId ? "the node we asked" : "a peer of the node we asked";
    console.log(`executor   ${verification.signerNodeId} (${where})`);
    const body = verification.body;
    if (body !== undefined) {
      console.log(`requester  ${body.requesterNodeId}`);
      console.log(
        `runtime    ${body.runtime?.name} ${body.runtime?.version}, fuel ${body.fuelConsumed}, wall ${body.wallTimeUs} us`,
      );
    }
    const ok = verification.valid && stdout === [...GREETING].reverse().join("");
    console.log(`receipt    ${verification.valid ? "VALID" : "INVALID"}`);
    if (verification.valid) {
      console.log("           (the executor's key signed these hashes of what it ran and returned;");
      console.log("           a receipt makes a wrong answer attributable, it does not prove it right)");
    }

    // A tampered copy: one bit of the signed payload flipped.
    const receipt = result.receipt;
    let tamperCaught = false;
    if (receipt !== undefined) {
      const payload = receipt.payload.slice();
      payload[10] = (payload[10] ?? 0) ^ 0x01;
      const tampered = newEnvelope({ payload, signature: receipt.signature, signerPublicKey: receipt.signerPublicKey });
      const rejected = verifyReceipt(tampered, { stdout: result.stdout });
      console.log("\ntampered copy (payload byte 10 flipped), checked offline:");
      show(rejected);
      tamperCaught = !rejected.valid && rejected.checks.find((c) => !c.passed)?.name === "signature";
    }
    console.log(`tampered   ${tamperCaught ? "REJECTED (as it must be)" : "ACCEPTED: the verifier is broken"}`);
    return ok && tamperCaught;
  } finally {
    client.close();
  }
}

const ok = await main();
console.log(`\n${ok ? "remote_test: OK" : "remote_test: FAILED"}`);
process.exitCode = ok ? 0 : 1;
