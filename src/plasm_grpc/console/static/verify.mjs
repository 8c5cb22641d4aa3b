// Receipt verification in the page, with the TypeScript client's verifier
// (clients/typescript/src/verify.ts, bundled as plasm-verify.browser.js): the
// same checks, in the same order and with the same names, as `plasm verify`.
// A dropped file is read here and never sent anywhere.
import { receiptBodyToJson, verifyReceipt } from "./plasm-verify.browser.js";
import { badge, byId, clear, el, enumName, facts, formatTime, mono, show } from "./dom.mjs";

/** Verify a receipt in any form the verifier reads; a file that is no receipt is an error. */
export function verify(input) {
  try {
    return { result: verifyReceipt(input) };
  } catch (err) {
    return { error: err instanceof Error ? err.message : String(err) };
  }
}

/** One list item per check: a mark, the check's name and its detail. */
export function renderChecks(list, checks) {
  clear(list);
  for (const check of checks) {
    list.append(
      el(
        "li",
        {
          className: check.passed ? "check pass" : "check fail",
          "data-check": check.name,
          "data-passed": String(check.passed),
        },
        el("span", { className: "mark", text: check.passed ? "✓" : "✗", "aria-hidden": "true" }),
        el("span", { className: "check-name", text: check.name }),
        el("span", { className: "check-detail", text: check.detail }),
      ),
    );
  }
}

/** Small badges, one per check, for a table cell. */
export function checkBadges(result) {
  return el(
    "span",
    { className: "check-badges", "data-valid": String(result.valid) },
    result.checks.map((c) => {
      const node = badge(c.name, c.passed ? "ok" : "bad");
      node.title = c.detail;
      return node;
    }),
  );
}

function showResult(fileName, outcome) {
  show("verify-result", true);
  const verdict = byId("verify-verdict");
  byId("verify-file").textContent = fileName;
  const body = byId("verify-body");
  if (outcome.error !== undefined) {
    verdict.textContent = "not a receipt";
    verdict.className = "badge badge-bad";
    verdict.dataset.valid = "false";
    renderChecks(byId("verify-checks"), [{ name: "format", passed: false, detail: outcome.error }]);
    clear(body);
    return;
  }
  const { result } = outcome;
  verdict.textContent = result.valid ? "valid receipt" : "NOT valid";
  verdict.className = `badge ${result.valid ? "badge-ok" : "badge-bad"}`;
  verdict.dataset.valid = String(result.valid);
  renderChecks(byId("verify-checks"), result.checks);
  if (result.body === undefined) {
    facts(body, [["signer", result.signerNodeId ? mono(result.signerNodeId) : "(no valid key)"]]);
    return;
  }
  const json = receiptBodyToJson(result.body);
  facts(body, [
    ["job id", mono(json.jobId ?? "")],
    ["executor", mono(json.executorNodeId ?? "")],
    ["requester", mono(json.requesterNodeId ?? "")],
    ["outcome", enumName(json.outcome, "OUTCOME_")],
    ["exit code", String(json.exitCode ?? 0)],
    ["module sha256", mono(json.moduleSha256 ?? "")],
    ["finished", formatTime(json.finishedAt)],
  ]);
}

async function verifyFile(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  showResult(file.name, verify(bytes));
}

export function setupVerifyPanel() {
  const zone = byId("drop-zone");
  const input = byId("receipt-file");
  input.addEventListener("change", () => {
    if (input.files?.length) verifyFile(input.files[0]);
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer?.files?.[0];
    if (file) verifyFile(file);
  });
}
