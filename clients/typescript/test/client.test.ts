// The client's retry and deadline rules (the PHP client's, clients/php/README.md
// "Deadlines and retries") over a scripted transport, the error mapping, the
// targets, and a node that is not there (a closed port, a missing Unix
// socket). No daemon.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { create, type DescMessage, type DescMethod, type MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type Transport } from "@connectrpc/connect";

import {
  ErrorReason,
  GetNodeInfoResponseSchema,
  JobEventKind,
  JobEventSchema,
  PlasmClient,
  PlasmConnectionError,
  PlasmService,
  SubmitResponseSchema,
  WatchResponseSchema,
  decodeReason,
  parseTarget,
  toPlasmError,
} from "../src/index.js";
import { rejectsWith } from "./failures.js";

type Step = { ok: MessageShape<DescMessage> } | { fail: () => Error } | { events: MessageShape<DescMessage>[] };

interface Seen {
  method: string;
  timeoutMs: number | undefined;
  input: Record<string, unknown>;
}

/** A Transport that answers each call with the next scripted step and records what it was asked. */
function scripted(steps: Step[]): { transport: Transport; seen: Seen[] } {
  const seen: Seen[] = [];
  const next = (method: DescMethod, timeoutMs: number | undefined, input: unknown): Step => {
    seen.push({ method: method.name, timeoutMs, input: input as Record<string, unknown> });
    const step = steps.shift();
    if (step === undefined) throw new Error(`no scripted answer for call ${seen.length} (${method.name})`);
    if ("fail" in step) throw step.fail();
    return step;
  };
  const transport: Transport = {
    async unary(method, _signal, timeoutMs, _header, input) {
      const step = next(method, timeoutMs, input);
      assert.ok("ok" in step);
      return {
        stream: false,
        service: PlasmService,
        method,
        header: new Headers(),
        trailer: new Headers(),
        message: step.ok as never,
      };
    },
    async stream(method, _signal, timeoutMs, _header, input) {
      let first: unknown;
      for await (const message of input) first = message;
      const step = next(method, timeoutMs, first);
      assert.ok("events" in step);
      const events = step.events;
      return {
        stream: true,
        service: PlasmService,
        method,
        header: new Headers(),
        trailer: new Headers(),
        message: (async function* () {
          yield* events as never[];
        })(),
      };
    },
  };
  return { transport, seen };
}

const nodeError = (message: string, code: string, syscall?: string): Error =>
  Object.assign(new Error(message), { code, ...(syscall ? { syscall } : {}) });
// What Connect-ES's Node transport throws for these (connectErrorFromNodeReason).
const refused = () =>
  new ConnectError("connect ECONNREFUSED", Code.Unavailable, undefined, undefined, nodeError("connect ECONNREFUSED 127.0.0.1:1", "ECONNREFUSED", "connect"));
const reset = () =>
  new ConnectError("read ECONNRESET", Code.Aborted, undefined, undefined, nodeError("read ECONNRESET", "ECONNRESET", "read"));
const serverSays = (code: Code, reason: string) => () =>
  new ConnectError("the node says no", code, new Headers({ "plasm-error-reason": reason }));

const info = create(GetNodeInfoResponseSchema, { nodeId: "ab".repeat(32) });
const submitted = create(SubmitResponseSchema, { executorNodeId: "cd".repeat(32) });
const fast = { retries: 3, backoffMs: 1, maxBackoffMs: 2 };

describe("retries", () => {
  test("a read is retried on the node's UNAVAILABLE until it answers", async () => {
    const { transport, seen } = scripted([
      { fail: serverSays(Code.Unavailable, "ERROR_REASON_SHUTTING_DOWN") },
      { fail: refused },
      { ok: info },
    ]);
    const client = new PlasmClient(undefined, { ...fast, transport });
    assert.equal((await client.getNodeInfo()).nodeId, info.nodeId);
    assert.equal(seen.length, 3);
  });

  test("a read gives up after `retries` extra attempts", async () => {
    const fail = { fail: serverSays(Code.Unavailable, "ERROR_REASON_SHUTTING_DOWN") };
    const { transport, seen } = scripted([fail, fail, fail]);
    const client = new PlasmClient(undefined, { ...fast, retries: 2, transport });
    const err = await rejectsWith(client.getNodeInfo());
    assert.equal(err.code, Code.Unavailable);
    assert.equal(err.reason, ErrorReason.SHUTTING_DOWN);
    assert.equal(seen.length, 3);
  });

  test("other statuses are not retried", async () => {
    const { transport, seen } = scripted([{ fail: serverSays(Code.NotFound, "ERROR_REASON_RECEIPT_NOT_FOUND") }]);
    const client = new PlasmClient(undefined, { ...fast, transport });
    const err = await rejectsWith(client.getReceipt("0".repeat(32)));
    assert.equal(err.code, Code.NotFound);
    assert.equal(err.statusName, "NOT_FOUND");
    assert.equal(err.reason, ErrorReason.RECEIPT_NOT_FOUND);
    assert.equal(err.reasonName, "ERROR_REASON_RECEIPT_NOT_FOUND");
    assert.equal(err.details, "the node says no");
    assert.equal(seen.length, 1);
  });

  test("Submit is not retried on the node's UNAVAILABLE: the job may have run", async () => {
    const { transport, seen } = scripted([{ fail: serverSays(Code.Unavailable, "ERROR_REASON_NO_WORKER") }]);
    const client = new PlasmClient(undefined, { ...fast, transport });
    const err = await rejectsWith(client.submit(new Uint8Array([0])));
    assert.equal(err.reason, ErrorReason.NO_WORKER);
    assert.equal(seen.length, 1);
  });

  test("Submit is not retried when the connection dropped after sending", async () => {
    const { transport, seen } = scripted([{ fail: reset }]);
    const client = new PlasmClient(undefined, { ...fast, transport });
    const err = await rejectsWith(client.submit(new Uint8Array([0])));
    assert.ok(err instanceof PlasmConnectionError);
    assert.equal(err.code, Code.Unavailable);
    assert.equal(err.requestSent, true);
    assert.equal(seen.length, 1);
  });

  test("a dropped connection is retried for a read", async () => {
    const { transport, seen } = scripted([{ fail: reset }, { ok: info }]);
    const client = new PlasmClient(undefined, { ...fast, transport });
    await client.getNodeInfo();
    assert.equal(seen.length, 2);
  });

  test("Submit is retried when nothing was sent, with the same job id every time", async () => {
    const { transport, seen } = scripted([{ fail: refused }, { fail: refused }, { ok: submitted }]);
    const client = new PlasmClient(undefined, { ...fast, transport });
    const response = await client.submit(new Uint8Array([0]), { args: ["x"], env: [["K", "V"]], stdin: "in" });
    assert.equal(response.executorNodeId, submitted.executorNodeId);
    assert.equal(seen.length, 3);
    const ids = seen.map((s) => s.input["jobId"]);
    assert.match(String(ids[0]), /^[0-9a-f]{32}$/);
    assert.deepEqual(ids, [ids[0], ids[0], ids[0]]);
    const manifest = seen[0]?.input["manifest"] as { args: string[]; env: { name: string; value: string }[]; stdin: Uint8Array };
    assert.deepEqual(manifest.args, ["x"]);
    assert.deepEqual(manifest.env, [{ name: "K", value: "V" }]);
    assert.deepEqual([...manifest.stdin], [...new TextEncoder().encode("in")]);
  });

  test("the caller's job id is sent as is", async () => {
    const { transport, seen } = scripted([{ ok: submitted }]);
    const client = new PlasmClient(undefined, { ...fast, transport });
    await client.submit(new Uint8Array(0), { jobId: "f".repeat(32), moduleSha256: "a".repeat(64) });
    assert.equal(seen[0]?.input["jobId"], "f".repeat(32));
  });

  test("Watch is retried when nothing was sent, and yields the events", async () => {
    const events = [JobEventKind.SUBMITTED, JobEventKind.RUNNING, JobEventKind.FINISHED].map((kind) =>
      create(WatchResponseSchema, { event: create(JobEventSchema, { jobId: "1".repeat(32), kind }) }),
    );
    const { transport, seen } = scripted([{ fail: refused }, { events }]);
    const client = new PlasmClient(undefined, { ...fast, transport });
    const kinds: JobEventKind[] = [];
    for await (const event of client.watch("1".repeat(32))) kinds.push(event.kind);
    assert.deepEqual(kinds, [JobEventKind.SUBMITTED, JobEventKind.RUNNING, JobEventKind.FINISHED]);
    assert.equal(seen.length, 2);
    assert.equal(seen[1]?.input["jobId"], "1".repeat(32));
  });

  test("Watch is not retried on the node's UNAVAILABLE", async () => {
    const { transport, seen } = scripted([{ fail: serverSays(Code.Unavailable, "ERROR_REASON_SHUTTING_DOWN") }]);
    const client = new PlasmClient(undefined, { ...fast, transport });
    const watching = (async () => {
      for await (const _ of client.watch("1".repeat(32))) void _;
    })();
    assert.equal((await rejectsWith(watching)).reason, ErrorReason.SHUTTING_DOWN);
    assert.equal(seen.length, 1);
  });
});

describe("deadlines", () => {
  test("the deadline goes to the transport, and no retry waits past it", async () => {
    const fail = { fail: serverSays(Code.Unavailable, "") };
    const { transport, seen } = scripted([fail, fail]);
    // The first backoff (at least 5 s) would end past the 300 ms deadline: give up at once.
    const client = new PlasmClient(undefined, { retries: 3, backoffMs: 10_000, maxBackoffMs: 10_000, transport });
    const err = await rejectsWith(client.getNodeInfo({ deadlineMs: 300 }));
    assert.equal(err.code, Code.Unavailable);
    assert.equal(seen.length, 1);
    const timeout = seen[0]?.timeoutMs ?? 0;
    assert.ok(timeout > 0 && timeout <= 300, `timeoutMs ${timeout}`);
  });

  test("the client's default deadline applies, and null means none", async () => {
    const { transport, seen } = scripted([{ ok: info }, { ok: info }]);
    const client = new PlasmClient(undefined, { deadlineMs: 5_000, transport });
    await client.getNodeInfo();
    await client.getNodeInfo({ deadlineMs: null });
    assert.ok((seen[0]?.timeoutMs ?? 0) > 0 && (seen[0]?.timeoutMs ?? 0) <= 5_000);
    assert.ok((seen[1]?.timeoutMs ?? 0) <= 0, "no deadline is sent as no timeout");
  });

  test("a deadline already passed fails with DEADLINE_EXCEEDED before calling", async () => {
    const { transport, seen } = scripted([]);
    const client = new PlasmClient(undefined, { transport });
    const err = await rejectsWith(client.getNodeInfo({ deadlineMs: 0 }));
    assert.equal(err.code, Code.DeadlineExceeded);
    assert.equal(seen.length, 0);
  });
});

describe("errors", () => {
  test("reasons decode to plasm.v1.ErrorReason", () => {
    assert.equal(decodeReason("ERROR_REASON_MODULE_HASH_MISMATCH"), ErrorReason.MODULE_HASH_MISMATCH);
    assert.equal(decodeReason("ERROR_REASON_DEADLINE_EXCEEDED"), ErrorReason.DEADLINE_EXCEEDED);
    assert.equal(decodeReason(""), ErrorReason.UNSPECIFIED);
    assert.equal(decodeReason("ERROR_REASON_FROM_THE_FUTURE"), ErrorReason.UNSPECIFIED);
    const err = toPlasmError(serverSays(Code.FailedPrecondition, "ERROR_REASON_FROM_THE_FUTURE")());
    assert.equal(err.reason, ErrorReason.UNSPECIFIED);
    assert.equal(err.reasonName, "ERROR_REASON_FROM_THE_FUTURE");
    assert.equal(err.message, "FAILED_PRECONDITION: the node says no (ERROR_REASON_FROM_THE_FUTURE)");
  });

  test("a failed connect is UNAVAILABLE and not sent; a missing Unix socket too", () => {
    for (const cause of [
      nodeError("connect ECONNREFUSED 127.0.0.1:1", "ECONNREFUSED", "connect"),
      nodeError("connect ENOENT /nope.sock", "ENOENT", "connect"),
      nodeError("getaddrinfo ENOTFOUND nowhere", "ENOTFOUND", "getaddrinfo"),
    ]) {
      const err = toPlasmError(new ConnectError(cause.message, Code.Internal, undefined, undefined, cause));
      assert.ok(err instanceof PlasmConnectionError, cause.message);
      assert.equal(err.code, Code.Unavailable);
      assert.equal(err.requestSent, false);
    }
  });
});

describe("targets", () => {
  test("host:port, [v6]:port, unix: and URLs", () => {
    assert.deepEqual(parseTarget("127.0.0.1:50151"), { kind: "tcp", baseUrl: "http://127.0.0.1:50151" });
    assert.deepEqual(parseTarget("[::1]:50151"), { kind: "tcp", baseUrl: "http://[::1]:50151" });
    assert.deepEqual(parseTarget("localhost:1"), { kind: "tcp", baseUrl: "http://localhost:1" });
    assert.deepEqual(parseTarget("unix:/run/plasm/plasmd.sock"), { kind: "unix", path: "/run/plasm/plasmd.sock" });
    assert.deepEqual(parseTarget("unix:///run/plasm/plasmd.sock"), { kind: "unix", path: "/run/plasm/plasmd.sock" });
    assert.deepEqual(parseTarget("https://node:443"), { kind: "https", baseUrl: "https://node:443" });
    for (const bad of ["", "127.0.0.1", "unix:relative.sock", "host:port", "a b:1"]) {
      assert.throws(() => parseTarget(bad), RangeError, bad);
    }
  });
});

describe("no node there", () => {
  for (const target of ["127.0.0.1:1", "unix:/nonexistent/plasmd.sock"]) {
    test(`${target}: every call, Submit included, fails UNAVAILABLE after its retries`, async () => {
      const client = new PlasmClient(target, { ...fast, deadlineMs: 10_000 });
      try {
        for (const call of [() => client.getNodeInfo(), () => client.submit(new Uint8Array([0]))]) {
          const err = await rejectsWith(call());
          assert.ok(err instanceof PlasmConnectionError, err.message);
          assert.equal(err.code, Code.Unavailable);
          assert.equal(err.requestSent, false);
          assert.match(err.message, /^UNAVAILABLE: cannot connect: connect (ECONNREFUSED|ENOENT)/);
        }
      } finally {
        client.close();
      }
    });
  }
});
