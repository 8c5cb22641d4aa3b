// Typed errors for failed calls: the gRPC status, the node's message, and
// Plasm's machine-readable reason from the "plasm-error-reason" trailer (a
// plasm.v1.ErrorReason value name, api/service.py), decoded to the enum.
import { Code, ConnectError } from "@connectrpc/connect";

import { ErrorReason } from "./gen/plasm/v1/errors_pb.js";

export { Code } from "@connectrpc/connect";
export { ErrorReason } from "./gen/plasm/v1/errors_pb.js";

export const REASON_KEY = "plasm-error-reason";

/** gRPC status names as the gRPC spec spells them ("NOT_FOUND"), by code. */
const STATUS_NAMES: Record<number, string> = {
  [Code.Canceled]: "CANCELLED",
  [Code.Unknown]: "UNKNOWN",
  [Code.InvalidArgument]: "INVALID_ARGUMENT",
  [Code.DeadlineExceeded]: "DEADLINE_EXCEEDED",
  [Code.NotFound]: "NOT_FOUND",
  [Code.AlreadyExists]: "ALREADY_EXISTS",
  [Code.PermissionDenied]: "PERMISSION_DENIED",
  [Code.ResourceExhausted]: "RESOURCE_EXHAUSTED",
  [Code.FailedPrecondition]: "FAILED_PRECONDITION",
  [Code.Aborted]: "ABORTED",
  [Code.OutOfRange]: "OUT_OF_RANGE",
  [Code.Unimplemented]: "UNIMPLEMENTED",
  [Code.Internal]: "INTERNAL",
  [Code.Unavailable]: "UNAVAILABLE",
  [Code.DataLoss]: "DATA_LOSS",
  [Code.Unauthenticated]: "UNAUTHENTICATED",
};

export function statusName(code: Code): string {
  return STATUS_NAMES[code] ?? `CODE_${code}`;
}

/** A failed call. */
export class PlasmError extends Error {
  override name = "PlasmError";
  /** The gRPC status code (Code.NotFound is 5, as in gRPC). */
  readonly code: Code;
  /** The node's message, without the status in front. */
  readonly details: string;
  /** Plasm's reason, ErrorReason.UNSPECIFIED when the node sent none (or one this client does not know). */
  readonly reason: ErrorReason;
  /** The trailer as sent, for example "ERROR_REASON_RECEIPT_NOT_FOUND"; "" without one. */
  readonly reasonName: string;
  /** Response headers and trailers. */
  readonly metadata: Headers;

  constructor(
    code: Code,
    details: string,
    options: { reasonName?: string; metadata?: Headers; cause?: unknown } = {},
  ) {
    const reasonName = options.reasonName ?? "";
    super(`${statusName(code)}: ${details}${reasonName ? ` (${reasonName})` : ""}`, { cause: options.cause });
    this.code = code;
    this.details = details;
    this.reasonName = reasonName;
    this.reason = decodeReason(reasonName);
    this.metadata = options.metadata ?? new Headers();
  }

  /** "NOT_FOUND", "UNAVAILABLE", ... */
  get statusName(): string {
    return statusName(this.code);
  }
}

/**
 * The connection failed (UNAVAILABLE): refused, no such socket, name not
 * resolved, or dropped. `requestSent` says whether the request may have
 * reached the node; Submit and Watch are retried only when it is false.
 */
export class PlasmConnectionError extends PlasmError {
  override name = "PlasmConnectionError";
  readonly requestSent: boolean;

  constructor(details: string, requestSent: boolean, cause?: unknown) {
    super(Code.Unavailable, details, { cause });
    this.requestSent = requestSent;
  }
}

export function decodeReason(name: string): ErrorReason {
  if (!name.startsWith("ERROR_REASON_")) return ErrorReason.UNSPECIFIED;
  const value = (ErrorReason as unknown as Record<string, number | undefined>)[name.slice("ERROR_REASON_".length)];
  return typeof value === "number" ? (value as ErrorReason) : ErrorReason.UNSPECIFIED;
}

// System calls that fail before a single byte of the request leaves: nothing
// reached the node, so even a Submit may be tried again.
const BEFORE_SENDING_SYSCALLS = new Set(["connect", "getaddrinfo"]);
// Failures of a connection that was up: the request may have been sent.
const DROPPED_CODES = new Set([
  "ECONNRESET",
  "EPIPE",
  "ERR_HTTP2_GOAWAY_SESSION",
  "ERR_HTTP2_SESSION_ERROR",
  "ERR_HTTP2_STREAM_CANCEL",
  "ERR_HTTP2_STREAM_ERROR",
  "ERR_HTTP2_INVALID_SESSION",
  "ERR_HTTP2_ERROR",
]);

interface NodeErrorProps {
  code?: string;
  syscall?: string;
  message: string;
}

function causeChain(err: unknown): NodeErrorProps[] {
  const chain: NodeErrorProps[] = [];
  const seen = new Set<unknown>();
  let current: unknown = err;
  while (current instanceof Error && !seen.has(current)) {
    seen.add(current);
    const props = current as Error & { code?: unknown; syscall?: unknown };
    chain.push({
      message: current.message,
      ...(typeof props.code === "string" ? { code: props.code } : {}),
      ...(typeof props.syscall === "string" ? { syscall: props.syscall } : {}),
    });
    current = current.cause;
  }
  return chain;
}

/** Any error from a call, as a PlasmError. */
export function toPlasmError(err: unknown): PlasmError {
  if (err instanceof PlasmError) return err;
  const connectError = ConnectError.from(err);
  if (!connectError.isWireError) {
    // Connect-ES maps Node's connection errors to different codes (a missing
    // Unix socket is INTERNAL, a reset ABORTED); a connection that failed is
    // UNAVAILABLE here, as in gRPC's own clients, with whether it got as far
    // as sending.
    const chain = causeChain(connectError.cause ?? err);
    const failedToConnect = chain.find((p) => p.syscall !== undefined && BEFORE_SENDING_SYSCALLS.has(p.syscall));
    if (failedToConnect !== undefined) {
      return new PlasmConnectionError(`cannot connect: ${failedToConnect.message}`, false, err);
    }
    const dropped = chain.find((p) => p.code !== undefined && DROPPED_CODES.has(p.code));
    if (dropped !== undefined) {
      return new PlasmConnectionError(`connection dropped: ${dropped.message}`, true, err);
    }
  }
  return new PlasmError(connectError.code, connectError.rawMessage, {
    reasonName: connectError.metadata.get(REASON_KEY) ?? "",
    metadata: connectError.metadata,
    cause: err,
  });
}
