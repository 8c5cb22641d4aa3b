// The web console in headless Debian Chromium (playwright-core, never a
// downloaded browser). Run by tests/test_console_browser.py, which starts the
// network and writes the fixture named by $PLASM_BROWSER_FIXTURE.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { chromium } from "playwright-core";

const fixture = JSON.parse(readFileSync(process.env.PLASM_BROWSER_FIXTURE, "utf8"));
const origin = new URL(fixture.url).origin;
const WAIT = { timeout: 60_000 };

let browser;
let page;
const foreignRequests = [];
const pageErrors = [];

async function screenshot(name) {
  const path = join(fixture.artifacts, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  console.log(`screenshot: ${path}`);
}

/** Drop `path` on the verify panel as a user would: a drop event carrying the file. */
async function dropFile(path, name) {
  const b64 = readFileSync(path).toString("base64");
  const transfer = await page.evaluateHandle(
    ({ b64, name }) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([bytes], name, { type: "application/json" }));
      return dt;
    },
    { b64, name },
  );
  await page.dispatchEvent("#drop-zone", "drop", { dataTransfer: transfer });
}

async function shownChecks() {
  return page.$$eval("#verify-checks li", (items) =>
    items.map((li) => ({ name: li.dataset.check, passed: li.dataset.passed === "true" })),
  );
}

before(async () => {
  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
  page.on("request", (request) => {
    if (!request.url().startsWith(origin)) foreignRequests.push(request.url());
  });
  page.on("pageerror", (err) => pageErrors.push(String(err)));
  page.on("console", (message) => {
    if (message.type() === "error") pageErrors.push(message.text());
  });
  await page.goto(fixture.url);
});

after(async () => {
  await browser?.close();
});

test("shows the node's identity and health, and its peers with their capabilities", async () => {
  await page.waitForFunction((id) => document.getElementById("node-id").textContent === id, fixture.nodeId, WAIT);
  await page.waitForSelector('#health[data-status="SERVING"]', WAIT);
  await page.waitForFunction(() => document.getElementById("live").textContent === "events: live", null, WAIT);
  for (const id of fixture.peerIds) {
    const row = await page.waitForSelector(`#peers tr[data-node-id="${id}"]`, WAIT);
    const text = await row.textContent();
    assert.match(text, /wasmtime/, "the peer's signed record shows its runtime");
  }
  // The receipt of the job Python submitted, checked in the page.
  const cell = await page.waitForSelector(`#receipts tr[data-job-id="${fixture.receiptJobId}"] .check-badges`, WAIT);
  assert.equal(await cell.getAttribute("data-valid"), "true");
  await screenshot("overview");
});

test("a wrong token is refused, then the right one submits a job whose events arrive live", async () => {
  await page.fill("#token", "not-the-token-at-all");
  await page.setInputFiles("#module-file", fixture.slowModule);
  await page.click("#submit-job");
  await page.waitForSelector('#submit-status[data-outcome="refused"]', WAIT);
  assert.match(await page.textContent("#submit-status"), /wrong console token/);
  // Chromium logs the refused request (403) as a console error: that one is expected.
  const refused = pageErrors.findIndex((text) => text.includes("403"));
  assert.ok(refused >= 0, pageErrors.join("; "));
  pageErrors.splice(refused, 1);

  // More fuel and time than the node's defaults: the job spins for a few seconds.
  await page.fill("#max-fuel", "200000000000");
  await page.fill("#timeout-ms", "120000");
  await page.fill("#token", fixture.token);
  await page.click("#submit-job");
  // The job is selected at once; its events come over the live stream while it runs.
  await page.waitForFunction(
    () => {
      const kinds = [...document.querySelectorAll("#job-events li")].map((li) => li.dataset.kind);
      return kinds.length >= 3 && !kinds.includes("JOB_EVENT_KIND_FINISHED");
    },
    null,
    WAIT,
  );
  const title = await page.textContent("#job-title");
  const jobId = title.replace("Job ", "");
  const live = await page.$$eval("#job-events li", (items) => items.map((li) => li.dataset.kind));
  assert.ok(live.includes("JOB_EVENT_KIND_SUBMITTED"), live.join(", "));
  assert.equal(await page.getAttribute(`#jobs li[data-job-id="${jobId}"]`, "data-ended"), "false");
  await screenshot("job-live");

  await page.waitForSelector('#job-events li[data-kind="JOB_EVENT_KIND_FINISHED"]', { timeout: 120_000 });
  await page.waitForFunction(
    () => document.getElementById("submit-status").dataset.outcome === "OUTCOME_SUCCESS",
    null,
    WAIT,
  ).catch(async (err) => {
    throw new Error(`${err.message}; the page says: ${await page.textContent("#submit-status")}`);
  });
  assert.equal((await page.textContent("#submit-stdout")).trim(), "spun");
  const all = await page.$$eval("#job-events li", (items) => items.map((li) => li.dataset.kind));
  assert.ok(all.length > live.length, "more events arrived after the first ones were shown");
  await page.waitForSelector(`#receipts tr[data-job-id="${jobId}"] .check-badges[data-valid="true"]`, WAIT);
  await screenshot("job-finished");
});

test("a dropped receipt is verified in the page, every check shown", async () => {
  await dropFile(fixture.goodReceipt, "receipt.json");
  await page.waitForSelector('#verify-verdict[data-valid="true"]', WAIT);
  assert.deepEqual(await shownChecks(), fixture.goodChecks);
  assert.match(await page.textContent("#verify-body"), new RegExp(fixture.receiptJobId));
  await page.locator("#verify-panel").scrollIntoViewIfNeeded();
  await screenshot("verify-valid");
});

test("a tampered receipt is rejected, the failing check named", async () => {
  await page.setInputFiles("#receipt-file", fixture.tamperedReceipt);
  await page.waitForSelector('#verify-verdict[data-valid="false"]', WAIT);
  const checks = await shownChecks();
  assert.deepEqual(checks, [{ name: "signature", passed: false }]);
  assert.match(await page.textContent('#verify-checks li[data-check="signature"]'), /signature/);
  await page.locator("#verify-panel").scrollIntoViewIfNeeded();
  await screenshot("verify-tampered");
});

test("the page's verifier agrees with Python on every receipt vector", async () => {
  const results = await page.evaluate(async (vectors) => {
    const v = await import("/static/plasm-verify.browser.js");
    const bytes = (b64) => v.base64Decode(b64);
    const summary = (r) => ({ valid: r.valid, checks: r.checks.map((c) => ({ name: c.name, passed: c.passed })) });
    return vectors.map((vector) => {
      const out = { name: vector.name, bare: summary(v.verifyReceipt(bytes(vector.envelope_b64))) };
      if (vector.options) {
        const o = vector.options;
        out.full = summary(
          v.verifyReceipt(bytes(vector.envelope_b64), {
            expectedExecutorNodeId: o.expectedExecutorNodeId,
            stdout: bytes(o.stdout_b64),
            stderr: bytes(o.stderr_b64),
            module: bytes(o.module_b64),
            input: { args: o.args, env: o.env, stdin: bytes(o.stdin_b64) },
          }),
        );
      }
      return out;
    });
  }, fixture.vectors);
  assert.equal(results.length, fixture.vectors.length);
  for (const [i, vector] of fixture.vectors.entries()) {
    assert.deepEqual(results[i].bare, vector.bare, `${vector.name} (receipt alone)`);
    if (vector.full) assert.deepEqual(results[i].full, vector.full, `${vector.name} (with the job's data)`);
  }
  console.log(`vectors: ${results.length} agree with Python`);
});

test("nothing came from another origin and the page logged no error", () => {
  assert.deepEqual(foreignRequests, []);
  assert.deepEqual(pageErrors, []);
});
