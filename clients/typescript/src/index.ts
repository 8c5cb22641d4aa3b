// @plasm/client: a typed client for plasm.v1.PlasmService (Node) and the
// offline receipt verifier (Node and browsers; the browser entry point is
// ./browser.js).
export * from "./browser.js";
export {
  type CallOpts,
  type ClientOptions,
  DEFAULT_TARGET,
  PlasmClient,
  type SubmitOptions,
  type Target,
  type VerifyCallOptions,
  newJobId,
  parseTarget,
} from "./client.js";
export { Code, ErrorReason, PlasmConnectionError, PlasmError, REASON_KEY, decodeReason, statusName, toPlasmError } from "./errors.js";
export * from "./gen/plasm/v1/service_pb.js";
export * from "./gen/plasm/v1/job_pb.js";
export * from "./gen/plasm/v1/manifest_pb.js";
export * from "./gen/plasm/v1/limits_pb.js";
export * from "./gen/plasm/v1/capability_pb.js";
export * from "./gen/plasm/v1/envelope_pb.js";
export * from "./gen/plasm/v1/receipt_pb.js";
