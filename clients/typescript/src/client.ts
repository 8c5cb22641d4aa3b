// A client for a node's plasm.v1.PlasmService over gRPC (HTTP/2), on TCP or
// the node's Unix socket, with Connect-ES's gRPC transport for Node.
//
// Why Connect-ES: createGrpcTransport speaks real gRPC (HTTP/2, trailers,
// grpc-timeout) in Node, so it talks to plasmd's grpcio server as is; its
// clients are built from the same protoc-gen-es output as the messages and
// the verifier (one local buf plugin, pinned by the lock); Buf maintains it.
// @grpc/grpc-js would need a second code generator (grpc-tools or
// ts-proto) and a second set of message classes.
//
//   const client = new PlasmClient("127.0.0.1:50151");   // or "unix:/run/plasm/plasmd.sock"
//   const { result } = await client.submit(wasm, { args: ["hello.wasm"], stdin: "Hello, World" });
//   const check = verifyJobResult(result!, { module: wasm, input: { args: ["hello.wasm"], stdin: "Hello, World" } });
//
// Deadlines: every call has one (the call's deadlineMs, else the client's;
// null: none). It covers the call and all its retries, is sent to the node as
// grpc-timeout (so the node stops the work, a running guest included) and is
// enforced here; when it passes the call fails with DEADLINE_EXCEEDED.
//
// Retries, as the PHP client's (clients/php/README.md, "Deadlines and
// retries"): only UNAVAILABLE, up to `retries` times with exponential backoff
// and jitter, never past the deadline. Verify, GetNodeInfo, GetReceipt,
// ListReceipts, ListPeers, FindWorkers, FindPeer and Cancel are retried on any
// UNAVAILABLE. Submit and Watch only when the connection failed before the
// request was sent (PlasmConnectionError with requestSent false): a Submit
// that reached the node may have run. Every Submit carries a job id (the
// caller's or a random one), the same on every attempt, so a node that did
// receive an earlier attempt refuses the repeat as a duplicate instead of
// running the job twice.
import { connect as netConnect } from "node:net";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { type CallOptions, type Client, type Transport, Code, createClient } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";

import { PlasmConnectionError, PlasmError, toPlasmError } from "./errors.js";
import type { SignedEnvelope } from "./gen/plasm/v1/envelope_pb.js";
import type { JobEvent } from "./gen/plasm/v1/job_pb.js";
import type { ResourceLimitsSchema } from "./gen/plasm/v1/limits_pb.js";
import { type JobManifestSchema } from "./gen/plasm/v1/manifest_pb.js";
import {
  type FindPeerResponse,
  type FindWorkersRequestSchema,
  type FindWorkersResponse,
  type GetNodeInfoResponse,
  type ListPeersResponse,
  type ListReceiptsResponse,
  PlasmService,
  type StoredReceipt,
  type SubmitResponse,
  type VerifyResponse,
  VerifyRequestSchema,
} from "./gen/plasm/v1/service_pb.js";
import { type EnvEntry, type JobInput, envPair, stdinBytes } from "./input_hash.js";

export const DEFAULT_TARGET = "127.0.0.1:50151";

export interface ClientOptions {
  /** Default deadline per call in milliseconds (60 000); null: none. */
  deadlineMs?: number | null;
  /** Extra attempts on UNAVAILABLE (3). */
  retries?: number;
  /** First delay between attempts in ms (100), doubling up to maxBackoffMs (2000), with jitter (half to all of it). */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** Largest response message accepted (64 MiB). */
  maxMessageBytes?: number;
  /** CA bundle (PEM file) for https:// targets. */
  caFile?: string;
  /** A transport to use instead of gRPC over HTTP/2 (tests); close() does not close it. */
  transport?: Transport;
}

export interface CallOpts {
  /** This call's deadline in ms, retries included; null: none; unset: the client's. */
  deadlineMs?: number | null;
  /** Aborting it cancels the call (CANCELLED). */
  signal?: AbortSignal;
}

export interface SubmitOptions extends CallOpts {
  /** argv, including argv[0] if the guest expects one. */
  args?: readonly string[];
  /** In order (the order is part of the input hash). */
  env?: readonly EnvEntry[];
  stdin?: Uint8Array | string;
  limits?: MessageInitShape<typeof ResourceLimitsSchema>;
  /** 32 lowercase hex; unset: a fresh random one (see the retry rules). */
  jobId?: string;
  /** Run a module the node already holds: pass an empty module and its hash. */
  moduleSha256?: string;
}

export interface VerifyCallOptions extends CallOpts {
  expectedExecutorNodeId?: string;
  stdout?: Uint8Array;
  stderr?: Uint8Array;
  module?: Uint8Array;
  input?: JobInput;
}

/** Where a target string points. */
export type Target = { kind: "tcp"; baseUrl: string } | { kind: "unix"; path: string } | { kind: "https"; baseUrl: string };

/** "host:port", "[::1]:port", "unix:/path" (or "unix:///path"), "http://host:port" or "https://host:port". */
export function parseTarget(target: string): Target {
  if (target.startsWith("unix:")) {
    const path = target.startsWith("unix://") ? target.slice("unix://".length) : target.slice("unix:".length);
    if (!path.startsWith("/")) throw new RangeError(`a unix: target needs an absolute path, got ${target}`);
    return { kind: "unix", path };
  }
  if (target.startsWith("https://")) return { kind: "https", baseUrl: target };
  if (target.startsWith("http://")) return { kind: "tcp", baseUrl: target };
  if (!/^(\[[0-9a-fA-F:.]+\]|[^:/\s]+):\d{1,5}$/.test(target)) {
    throw new RangeError(`target must be host:port, [v6]:port, unix:/path or http(s)://host:port, got ${target}`);
  }
  return { kind: "tcp", baseUrl: `http://${target}` };
}

/** A fresh random job id (32 lowercase hex). */
export function newJobId(): string {
  return randomBytes(16).toString("hex");
}

export class PlasmClient {
  readonly target: string;
  private readonly rpc: Client<typeof PlasmService>;
  private readonly session: Http2SessionManager | undefined;
  private readonly deadlineMs: number | null;
  private readonly retries: number;
  private readonly backoffMs: number;
  private readonly maxBackoffMs: number;

  constructor(target: string = DEFAULT_TARGET, options: ClientOptions = {}) {
    this.target = target;
    this.deadlineMs = options.deadlineMs === undefined ? 60_000 : options.deadlineMs;
    this.retries = options.retries ?? 3;
    this.backoffMs = options.backoffMs ?? 100;
    this.maxBackoffMs = options.maxBackoffMs ?? 2_000;
    if (this.retries < 0 || this.backoffMs < 0 || this.maxBackoffMs < 0) {
      throw new RangeError("retries, backoffMs and maxBackoffMs must be >= 0");
    }
    let transport = options.transport;
    if (transport === undefined) {
      const where = parseTarget(target);
      // One HTTP/2 connection for every call, opened on first use and
      // reopened after it drops; close() ends it.
      const baseUrl = where.kind === "unix" ? "http://localhost" : where.baseUrl;
      const nodeOptions =
        where.kind === "unix"
          ? { createConnection: () => netConnect(where.path) }
          : where.kind === "https" && options.caFile !== undefined
            ? { ca: readFileSync(options.caFile) }
            : {};
      this.session = new Http2SessionManager(baseUrl, {}, nodeOptions);
      transport = createGrpcTransport({
        baseUrl,
        sessionManager: this.session,
        readMaxBytes: options.maxMessageBytes ?? 64 * 1024 * 1024,
      });
    }
    this.rpc = createClient(PlasmService, transport);
  }

  /** Close the connection. Calls made afterwards open a new one. */
  close(): void {
    this.session?.abort();
  }

  /** Run a job and return its output and signed receipt. */
  async submit(module: Uint8Array, options: SubmitOptions = {}): Promise<SubmitResponse> {
    const manifest: MessageInitShape<typeof JobManifestSchema> = {
      moduleSha256: options.moduleSha256 ?? "",
      args: [...(options.args ?? [])],
      env: (options.env ?? []).map((e) => {
        const [name, value] = envPair(e);
        return { name, value };
      }),
      stdin: stdinBytes(options.stdin),
      ...(options.limits !== undefined ? { limits: options.limits } : {}),
    };
    return this.submitManifest(manifest, { ...options, module });
  }

  /** Submit a manifest you built (placement requirements, a module the node holds, ...). */
  async submitManifest(
    manifest: MessageInitShape<typeof JobManifestSchema>,
    options: CallOpts & { module?: Uint8Array; jobId?: string } = {},
  ): Promise<SubmitResponse> {
    const request = { manifest, module: options.module ?? new Uint8Array(0), jobId: options.jobId ?? newJobId() };
    return this.unary(options, false, (call) => this.rpc.submit(request, call));
  }

  /** Ask the node to check a receipt. To check one without trusting a node, use verifyReceipt(). */
  async verify(receipt: SignedEnvelope, options: VerifyCallOptions = {}): Promise<VerifyResponse> {
    const request = create(VerifyRequestSchema, {
      receipt,
      expectedExecutorNodeId: options.expectedExecutorNodeId ?? "",
      ...(options.stdout !== undefined ? { stdout: options.stdout } : {}),
      ...(options.stderr !== undefined ? { stderr: options.stderr } : {}),
      ...(options.module !== undefined ? { module: options.module } : {}),
      ...(options.input !== undefined
        ? {
            input: {
              args: [...(options.input.args ?? [])],
              env: (options.input.env ?? []).map((e) => {
                const [name, value] = envPair(e);
                return { name, value };
              }),
              stdin: stdinBytes(options.input.stdin),
            },
          }
        : {}),
    });
    return this.unary(options, true, (call) => this.rpc.verify(request, call));
  }

  /** Identity, capabilities and state of the node. */
  async getNodeInfo(options: CallOpts = {}): Promise<GetNodeInfoResponse> {
    return this.unary(options, true, (call) => this.rpc.getNodeInfo({}, call));
  }

  /** A stored receipt; NOT_FOUND (ErrorReason.RECEIPT_NOT_FOUND) when the node has none. */
  async getReceipt(jobId: string, options: CallOpts = {}): Promise<StoredReceipt> {
    const response = await this.unary(options, true, (call) => this.rpc.getReceipt({ jobId }, call));
    if (response.receipt === undefined) throw new PlasmError(Code.Internal, "GetReceipt answered without a receipt");
    return response.receipt;
  }

  /** Stored receipts, newest first; pass nextPageToken back for the next page ("" at the end). */
  async listReceipts(
    page: { pageSize?: number; pageToken?: string } = {},
    options: CallOpts = {},
  ): Promise<ListReceiptsResponse> {
    const request = { pageSize: page.pageSize ?? 0, pageToken: page.pageToken ?? "" };
    return this.unary(options, true, (call) => this.rpc.listReceipts(request, call));
  }

  /** The peers in the node's DHT routing table, nearest first. */
  async listPeers(options: CallOpts = {}): Promise<ListPeersResponse> {
    return this.unary(options, true, (call) => this.rpc.listPeers({}, call));
  }

  /** Workers that can run jobs with these requirements, found through the DHT. */
  async findWorkers(
    requirements: MessageInitShape<typeof FindWorkersRequestSchema> = {},
    options: CallOpts = {},
  ): Promise<FindWorkersResponse> {
    return this.unary(options, true, (call) => this.rpc.findWorkers(requirements, call));
  }

  /** One node's signed peer record, looked up through the DHT. */
  async findPeer(nodeId: string, options: CallOpts = {}): Promise<FindPeerResponse> {
    return this.unary(options, true, (call) => this.rpc.findPeer({ nodeId }, call));
  }

  /** True when the job was still waiting or running and is being cancelled; false when it had ended. */
  async cancel(jobId: string, options: CallOpts = {}): Promise<boolean> {
    const response = await this.unary(options, true, (call) => this.rpc.cancel({ jobId }, call));
    return response.cancelled;
  }

  /**
   * A job's events from its start, then live until it ends (server streaming).
   * Breaking out of the loop cancels the stream. The deadline covers the
   * whole watch: pass deadlineMs: null to follow a long job.
   */
  async *watch(jobId: string, options: CallOpts = {}): AsyncGenerator<JobEvent, void, undefined> {
    const deadlineAt = this.deadlineAt(options);
    for (let retry = 0; ; retry++) {
      const call = this.callOptions(options, deadlineAt);
      try {
        for await (const response of this.rpc.watch({ jobId }, call)) {
          if (response.event !== undefined) yield response.event;
        }
        return;
      } catch (err) {
        const error = toPlasmError(err);
        await this.pauseBeforeRetry(error, false, retry, deadlineAt, options);
      }
    }
  }

  private deadlineAt(options: CallOpts): number | null {
    const ms = options.deadlineMs === undefined ? this.deadlineMs : options.deadlineMs;
    return ms === null ? null : performance.now() + ms;
  }

  private callOptions(options: CallOpts, deadlineAt: number | null): CallOptions {
    const call: CallOptions = {};
    if (options.signal !== undefined) call.signal = options.signal;
    if (deadlineAt !== null) {
      const left = Math.floor(deadlineAt - performance.now());
      if (left <= 0) throw new PlasmError(Code.DeadlineExceeded, "the call's deadline passed");
      call.timeoutMs = left;
    } else {
      call.timeoutMs = 0; // no deadline: Connect's "disable the default timeout"
    }
    return call;
  }

  private async unary<R>(options: CallOpts, idempotent: boolean, attempt: (call: CallOptions) => Promise<R>): Promise<R> {
    const deadlineAt = this.deadlineAt(options);
    for (let retry = 0; ; retry++) {
      const call = this.callOptions(options, deadlineAt);
      try {
        return await attempt(call);
      } catch (err) {
        await this.pauseBeforeRetry(toPlasmError(err), idempotent, retry, deadlineAt, options);
      }
    }
  }

  /** Wait before the next attempt, or throw `error` when it must not be retried. */
  private async pauseBeforeRetry(
    error: PlasmError,
    idempotent: boolean,
    retry: number,
    deadlineAt: number | null,
    options: CallOpts,
  ): Promise<void> {
    const notSent = error instanceof PlasmConnectionError && !error.requestSent;
    if (error.code !== Code.Unavailable || !(idempotent || notSent) || retry >= this.retries) throw error;
    const delay = this.backoffDelay(retry);
    if (deadlineAt !== null && performance.now() + delay >= deadlineAt) throw error;
    if (options.signal?.aborted) throw error;
    await new Promise((resolve) => setTimeout(resolve, delay));
  }

  /** Exponential backoff with jitter: between half and all of min(max, base * 2^retry). */
  private backoffDelay(retry: number): number {
    const ceiling = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** retry);
    return ceiling * (0.5 + 0.5 * Math.random());
  }
}
