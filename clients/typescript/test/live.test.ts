// Against a running plasmd (tests/test_typescript_client.py starts one and
// runs this with its addresses): submit hello and verify offline, the Verify
// RPC, a tampered receipt, stored receipts in their JSON form, Watch, Cancel,
// a deadline, typed errors with their reasons, the DHT calls, the Unix socket.
//
//   PLASM_ADDR=127.0.0.1:PORT PLASM_UNIX=unix:/path.sock \
//   PLASM_HELLO_WASM=examples/build/hello.wasm PLASM_LOOP_WASM=tests/wasm/build/infinite_loop.wasm \
//   node --test dist/test/live.test.js
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";

import {
  Code,
  ErrorReason,
  JobEventKind,
  Outcome,
  PlasmClient,
  type JobEvent,
  envelopeToJson,
  newEnvelope,
  newJobId,
  verifyJobResult,
  verifyReceipt,
} from "../src/index.js";
import { rejectsWith } from "./failures.js";

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: this suite runs against a live plasmd (see tests/test_typescript_client.py)`);
  return value;
}

const ADDR = required("PLASM_ADDR");
const UNIX = required("PLASM_UNIX");
const HELLO = new Uint8Array(readFileSync(required("PLASM_HELLO_WASM")));
const LOOP = new Uint8Array(readFileSync(required("PLASM_LOOP_WASM")));
const GREETING = "Hello, World";
const HELLO_INPUT = { args: ["hello.wasm"], stdin: GREETING };
const ENDS = new Set([JobEventKind.FINISHED, JobEventKind.FAILED]);

let client: PlasmClient;
let nodeId: string;

async function collect(events: AsyncIterable<JobEvent>): Promise<JobEvent[]> {
  const seen: JobEvent[] = [];
  for await (const event of events) seen.push(event);
  return seen;
}

before(async () => {
  client = new PlasmClient(ADDR, { deadlineMs: 60_000 });
  nodeId = (await client.getNodeInfo()).nodeId;
});
after(() => {
  client.close();
});

describe("submit and verify", () => {
  test("GetNodeInfo names the node", async () => {
    const info = await client.getNodeInfo();
    assert.match(info.nodeId, /^[0-9a-f]{64}$/);
    assert.equal(info.publicKey.length, 32);
    assert.ok(info.grpcAddresses.includes(ADDR), info.grpcAddresses.join(","));
  });

  test("hello runs, and its receipt verifies offline with every check", async () => {
    const response = await client.submit(HELLO, HELLO_INPUT);
    const result = response.result;
    assert.ok(result);
    assert.equal(new TextDecoder().decode(result.stdout), "dlroW ,olleH");
    assert.equal(result.outcome, Outcome.SUCCESS);
    assert.equal(response.executorNodeId, nodeId);
    const check = verifyJobResult(result, { module: HELLO, input: HELLO_INPUT, expectedExecutorNodeId: nodeId });
    assert.ok(check.valid, JSON.stringify(check.checks));
    assert.deepEqual(
      check.checks.map((c) => c.name),
      ["signature", "signer", "expected_executor", "stdout", "stderr", "module", "input"],
    );
    assert.equal(check.signerNodeId, nodeId);
    assert.equal(check.body?.jobId, result.jobId);

    // The node's Verify RPC makes the same checks and agrees.
    const remote = await client.verify(result.receipt!, {
      expectedExecutorNodeId: nodeId,
      stdout: result.stdout,
      stderr: result.stderr,
      module: HELLO,
      input: HELLO_INPUT,
    });
    assert.equal(remote.valid, true);
    assert.deepEqual(
      remote.checks.map((c) => [c.name, c.passed, c.detail]),
      check.checks.map((c) => [c.name, c.passed, c.detail]),
    );
    assert.equal(remote.signerNodeId, nodeId);

    // Stored: GetReceipt gives the same envelope; its proto3 JSON verifies; ListReceipts has it.
    const stored = await client.getReceipt(result.jobId);
    assert.deepEqual(stored.receipt?.payload, result.receipt?.payload);
    const file = JSON.stringify(envelopeToJson(stored.receipt!), null, 2);
    assert.equal(verifyReceipt(file, { stdout: result.stdout }).valid, true);
    const page = await client.listReceipts({ pageSize: 1000 });
    assert.ok(page.receipts.some((r) => r.body?.jobId === result.jobId));
  });

  test("a tampered receipt fails, offline and on the node", async () => {
    const result = (await client.submit(HELLO, HELLO_INPUT)).result!;
    const receipt = result.receipt!;
    const payload = receipt.payload.slice();
    payload[10] = (payload[10] ?? 0) ^ 0x01;
    const tampered = newEnvelope({ payload, signature: receipt.signature, signerPublicKey: receipt.signerPublicKey });
    const offline = verifyReceipt(tampered, { stdout: result.stdout });
    assert.equal(offline.valid, false);
    assert.deepEqual(offline.checks.map((c) => [c.name, c.passed]), [["signature", false]]);
    const remote = await client.verify(tampered);
    assert.equal(remote.valid, false);
    assert.deepEqual(remote.checks.map((c) => [c.name, c.passed]), [["signature", false]]);
  });
});

describe("watch and cancel", () => {
  test("Watch streams a job's events from before its Submit to its end", async () => {
    const jobId = newJobId();
    const watching = collect(client.watch(jobId));
    const response = await client.submit(HELLO, { ...HELLO_INPUT, jobId });
    assert.equal(response.result?.jobId, jobId);
    const events = await watching;
    assert.ok(events.every((e) => e.jobId === jobId));
    const kinds = events.map((e) => e.kind);
    assert.equal(kinds[0], JobEventKind.SUBMITTED, kinds.map((k) => JobEventKind[k]).join(","));
    assert.ok(kinds.includes(JobEventKind.ACCEPTED));
    assert.equal(kinds.at(-1), JobEventKind.FINISHED);
  });

  test("Cancel stops a running guest; the Submit answers with a CANCELLED receipt", async () => {
    const jobId = newJobId();
    const submitting = client.submit(LOOP, { jobId, deadlineMs: 60_000 });
    submitting.catch(() => undefined);
    for await (const event of client.watch(jobId)) {
      // Accepted on this node: the guest is queued or running. Leaving the loop ends the stream.
      if (event.kind === JobEventKind.ACCEPTED) break;
      assert.ok(!ENDS.has(event.kind), `the loop ended before it was cancelled: ${JobEventKind[event.kind]}`);
    }
    assert.equal(await client.cancel(jobId), true);
    const result = (await submitting).result!;
    assert.equal(result.outcome, Outcome.CANCELLED);
    assert.ok(verifyJobResult(result, { module: LOOP }).valid);
    assert.equal(await client.cancel(jobId), false, "a job that ended is not cancelled again");
  });

  test("Cancel of an unknown job is NOT_FOUND, JOB_NOT_FOUND", async () => {
    const err = await rejectsWith(client.cancel(newJobId()));
    assert.equal(err.code, Code.NotFound);
    assert.equal(err.reason, ErrorReason.JOB_NOT_FOUND);
  });
});

describe("deadlines and errors", () => {
  test("a deadline gives DEADLINE_EXCEEDED; the job id then cancels the job", async () => {
    const jobId = newJobId();
    const err = await rejectsWith(client.submit(LOOP, { jobId, deadlineMs: 500 }));
    assert.equal(err.code, Code.DeadlineExceeded, err.message);
    // The node is still there; the job, if it still runs, can be followed up by its id.
    assert.equal((await client.getNodeInfo()).nodeId, nodeId);
    await client.cancel(jobId);
    const events = await collect(client.watch(jobId, { deadlineMs: 30_000 }));
    assert.ok(ENDS.has(events.at(-1)!.kind), events.map((e) => JobEventKind[e.kind]).join(","));
  });

  test("a module that does not match its hash: INVALID_ARGUMENT, MODULE_HASH_MISMATCH", async () => {
    const err = await rejectsWith(client.submit(HELLO, { moduleSha256: "0".repeat(64) }));
    assert.equal(err.code, Code.InvalidArgument);
    assert.equal(err.reason, ErrorReason.MODULE_HASH_MISMATCH);
    assert.equal(err.reasonName, "ERROR_REASON_MODULE_HASH_MISMATCH");
    assert.ok(err.details.length > 0);
  });

  test("a malformed job id: INVALID_ARGUMENT, INVALID_REQUEST", async () => {
    const err = await rejectsWith(client.getReceipt("xyz"));
    assert.equal(err.code, Code.InvalidArgument);
    assert.equal(err.reason, ErrorReason.INVALID_REQUEST);
  });

  test("an unknown receipt: NOT_FOUND, RECEIPT_NOT_FOUND", async () => {
    const err = await rejectsWith(client.getReceipt(newJobId()));
    assert.equal(err.code, Code.NotFound);
    assert.equal(err.reason, ErrorReason.RECEIPT_NOT_FOUND);
  });

  test("a repeated job id is refused, not run twice", async () => {
    const jobId = newJobId();
    await client.submit(HELLO, { ...HELLO_INPUT, jobId });
    const err = await rejectsWith(client.submit(HELLO, { ...HELLO_INPUT, jobId }));
    assert.equal(err.code, Code.InvalidArgument);
    assert.equal(err.reason, ErrorReason.INVALID_REQUEST);
    assert.match(err.details, /already used/);
  });
});

describe("the DHT", () => {
  test("ListPeers, FindWorkers (this node is one), FindPeer", async () => {
    const peers = await client.listPeers();
    assert.ok(Array.isArray(peers.peers));
    const workers = await client.findWorkers({ limit: 10 });
    assert.ok(workers.workers.some((w) => w.nodeId === nodeId), JSON.stringify(workers.workers.map((w) => w.nodeId)));
    assert.match(workers.capabilityClass, /wasi=preview1/);
    const err = await rejectsWith(client.findPeer("ab".repeat(32), { deadlineMs: 20_000 }));
    assert.equal(err.code, Code.NotFound);
    assert.equal(err.reason, ErrorReason.PEER_NOT_FOUND);
    const bad = await rejectsWith(client.findPeer("zz"));
    assert.equal(bad.reason, ErrorReason.INVALID_REQUEST);
  });
});

describe("the Unix socket", () => {
  test("the same node, and a job with a receipt that verifies", async () => {
    const local = new PlasmClient(UNIX);
    try {
      assert.equal((await local.getNodeInfo()).nodeId, nodeId);
      const result = (await local.submit(HELLO, HELLO_INPUT)).result!;
      assert.equal(new TextDecoder().decode(result.stdout), "dlroW ,olleH");
      assert.ok(verifyJobResult(result, { module: HELLO, input: HELLO_INPUT, expectedExecutorNodeId: nodeId }).valid);
    } finally {
      local.close();
    }
  });
});
