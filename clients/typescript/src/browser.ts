// The entry point of the browser bundle (npm run build:browser writes
// dist/plasm-verify.browser.js, one self-contained ES module): the offline
// verifier and the helpers that read a receipt file. Everything it pulls in
// is browser-safe (no Node modules, no Buffer, no WebCrypto requirement).
export {
  type Check,
  type VerifyOptions,
  type VerifyResult,
  RECEIPT_VERSION,
  verifyJobResult,
  verifyReceipt,
} from "./verify.js";
export {
  type EnvelopeInput,
  RECEIPT_DOMAIN,
  ReceiptFormatError,
  checkSignature,
  envelopeFromJson,
  envelopeToJson,
  newEnvelope,
  parseEnvelope,
  receiptBodyToJson,
  signerNodeId,
} from "./envelope.js";
export { type EnvEntry, type JobInput, encodeInput, inputSha256 } from "./input_hash.js";
export { base64Decode, base64Encode } from "@bufbuild/protobuf/wire";
export { bytesToHex, hexToBytes } from "@noble/hashes/utils.js";
export { type ReceiptBody, Outcome } from "./gen/plasm/v1/receipt_pb.js";
export type { SignedEnvelope } from "./gen/plasm/v1/envelope_pb.js";
