// The console page: the node, its peers, its jobs with their live events, its
// receipts (checked in this browser), a receipt verifier and, when the node
// allows it, a form to run a job. Plain modules, no framework, no build step.
import { ApiError, getJson, postJson } from "./api.mjs";
import {
  badge,
  byId,
  clear,
  el,
  enumName,
  facts,
  formatBytes,
  formatMicros,
  formatTime,
  mono,
  setText,
  shortId,
  show,
} from "./dom.mjs";
import { checkBadges, setupVerifyPanel, verify } from "./verify.mjs";

const REFRESH_MS = 5000;
const MAX_JOBS = 100;
const state = {
  allowActions: false,
  jobs: new Map(), // jobId -> { events: [], ended }
  selected: "",
  pinned: false, // the user picked a job: new jobs do not take the detail view
};

function problem(err) {
  return err instanceof ApiError && err.reason ? `${err.message} (${err.reason})` : String(err.message ?? err);
}

// -- the node ------------------------------------------------------------------

async function refreshNode() {
  try {
    const [info, health] = await Promise.all([getJson("/api/node"), getJson("/api/health")]);
    show("node-error", false);
    setText("node-id", info.nodeId);
    byId("node-id").title = info.nodeId;
    document.title = `Plasm console · ${info.nodeId.slice(0, 12)}`;
    const status = health.service?.status ?? "UNKNOWN";
    const node = byId("health");
    node.textContent = status === "SERVING" ? "serving" : status.toLowerCase().replaceAll("_", " ");
    node.className = `badge ${status === "SERVING" ? "badge-ok" : "badge-bad"}`;
    node.dataset.status = status;
    facts(byId("node-facts"), [
      ["node id", mono(info.nodeId)],
      ["version", info.version],
      ["started", formatTime(info.startedAt)],
      ["gRPC", (info.grpcAddresses ?? []).join(", ")],
      ["overlay", info.overlayAddress || "(off)"],
      ["reachability", enumName(info.reachability, "REACHABILITY_") || "unknown"],
      ["relays", (info.relays ?? []).length ? info.relays.join(", ") : "none"],
      ["jobs", `${info.jobsRunning} running · ${info.jobsQueued} queued · ${info.jobsCompleted} done`],
      ["receipts", String(info.receiptsStored)],
      ["open connections", String((info.peers ?? []).length)],
    ]);
    const caps = info.capabilities ?? {};
    facts(byId("node-caps"), [
      ["runtime", `${caps.runtimeName ?? ""} ${caps.runtimeVersion ?? ""} (${caps.wasiVersion ?? ""})`],
      ["host", `${caps.arch ?? ""} · ${caps.os ?? ""} · ${caps.cores ?? 0} cores`],
      ["memory", formatBytes(caps.memoryBytes)],
      ["job slots", `${caps.freeJobSlots ?? 0} free of ${caps.totalJobSlots ?? 0}`],
    ]);
  } catch (err) {
    byId("health").textContent = "unreachable";
    byId("health").className = "badge badge-bad";
    setText("node-error", `cannot read the node: ${problem(err)}`);
    show("node-error", true);
  }
}

// -- peers ---------------------------------------------------------------------

async function refreshPeers() {
  const body = byId("peers").tBodies[0];
  try {
    const { peers } = await getJson("/api/peers");
    show("peers-error", false);
    clear(body);
    for (const peer of peers) {
      const caps = peer.recordContent?.capabilities ?? {};
      body.append(
        el(
          "tr",
          { "data-node-id": peer.nodeId },
          el("td", {}, shortId(peer.nodeId)),
          el("td", {}, mono(peer.address || "")),
          el("td", {}, peer.connected ? badge("connected", "ok") : badge("known", "unknown")),
          el("td", { text: peer.connected ? formatMicros(peer.rttUs) : "" }),
          el("td", { text: caps.runtimeName ? `${caps.runtimeName} ${caps.runtimeVersion}` : "(no record)" }),
          el("td", { text: caps.arch ?? "" }),
          el("td", { text: caps.totalJobSlots ? `${caps.freeJobSlots}/${caps.totalJobSlots}` : "" }),
          el("td", { text: caps.memoryBytes ? formatBytes(caps.memoryBytes) : "" }),
        ),
      );
    }
    setText("peer-count", String(peers.length));
    show("peers-empty", peers.length === 0);
  } catch (err) {
    setText("peers-error", problem(err));
    show("peers-error", true);
  }
}

// -- jobs and their live events -----------------------------------------------

function lastEvent(job) {
  return job.events[job.events.length - 1];
}

function stateOf(job) {
  const last = lastEvent(job);
  if (last === undefined) return ["unknown", "unknown"];
  const kind = enumName(last.kind, "JOB_EVENT_KIND_");
  if (last.kind === "JOB_EVENT_KIND_FINISHED") {
    const outcome = enumName(last.outcome, "OUTCOME_");
    return [outcome, outcome === "success" ? "ok" : "warn"];
  }
  if (last.kind === "JOB_EVENT_KIND_FAILED") return ["failed", "bad"];
  return [kind, "live"];
}

function describe(event) {
  const parts = [];
  if (event.attempt) parts.push(`attempt ${event.attempt}`);
  if (event.nodeId) parts.push(`node ${event.nodeId.slice(0, 16)}…`);
  if (event.kind === "JOB_EVENT_KIND_FINISHED") {
    parts.push(`${enumName(event.outcome, "OUTCOME_")}, exit ${event.exitCode}`);
  }
  if (event.declineReason && event.declineReason !== "DECLINE_REASON_UNSPECIFIED") {
    parts.push(enumName(event.declineReason, "DECLINE_REASON_"));
  }
  if (event.errorReason && event.errorReason !== "ERROR_REASON_UNSPECIFIED") {
    parts.push(event.errorReason.replace("ERROR_REASON_", ""));
  }
  if (Number(event.moduleBytes)) parts.push(formatBytes(event.moduleBytes));
  if (event.detail) parts.push(event.detail);
  return parts.join(" · ");
}

function eventItem(event) {
  const at = event.at ? new Date(event.at) : null;
  return el(
    "li",
    { className: "event", "data-kind": event.kind },
    el("time", { text: at ? at.toLocaleTimeString() : "", title: event.at ?? "" }),
    el("span", { className: "event-kind", text: enumName(event.kind, "JOB_EVENT_KIND_") }),
    el("span", { className: "event-detail", text: describe(event) }),
  );
}

function renderJobs() {
  const list = clear(byId("jobs"));
  for (const [jobId, job] of state.jobs) {
    const [label, kind] = stateOf(job);
    list.append(
      el(
        "li",
        {
          className: jobId === state.selected ? "job selected" : "job",
          "data-job-id": jobId,
          "data-ended": String(job.ended),
        },
        el(
          "button",
          {
            type: "button",
            onclick: () => {
              state.pinned = true;
              select(jobId);
            },
          },
          mono(jobId),
          badge(label, kind),
        ),
      ),
    );
  }
  setText("job-count", String(state.jobs.size));
  show("jobs-empty", state.jobs.size === 0);
}

function renderDetail() {
  const job = state.jobs.get(state.selected);
  const list = clear(byId("job-events"));
  if (job === undefined) {
    setText("job-title", "Select a job");
    show("job-actions", false);
    return;
  }
  setText("job-title", `Job ${state.selected}`);
  for (const event of job.events) list.append(eventItem(event));
  show("job-actions", state.allowActions && !job.ended);
}

function select(jobId) {
  state.selected = jobId;
  setText("cancel-status", "");
  renderJobs();
  renderDetail();
}

function remember(jobId) {
  let job = state.jobs.get(jobId);
  if (job === undefined) {
    job = { events: [], ended: false };
    // Newest first: a new job goes to the front.
    state.jobs = new Map([[jobId, job], ...state.jobs]);
    while (state.jobs.size > MAX_JOBS) state.jobs.delete([...state.jobs.keys()].pop());
  }
  return job;
}

function isTerminal(event) {
  return event.kind === "JOB_EVENT_KIND_FINISHED" || event.kind === "JOB_EVENT_KIND_FAILED";
}

function onJobEvent(event) {
  const isNew = !state.jobs.has(event.jobId);
  const job = remember(event.jobId);
  job.events.push(event);
  const terminal = isTerminal(event);
  if (terminal) job.ended = true;
  if (isNew && !state.pinned) state.selected = event.jobId;
  renderJobs();
  if (event.jobId === state.selected) {
    if (isNew) renderDetail();
    else {
      byId("job-events").append(eventItem(event));
      show("job-actions", state.allowActions && !job.ended);
    }
  }
  if (terminal) {
    refreshReceipts();
    refreshNode();
  }
}

function eventKey(event) {
  return `${event.kind}|${event.at}|${event.attempt}|${event.nodeId}`;
}

async function loadJobs() {
  const { jobs } = await getJson("/api/jobs");
  // Events that arrived live while the list was on its way are kept, once each.
  const merged = new Map();
  for (const j of jobs) {
    const seen = new Set(j.events.map(eventKey));
    const extra = (state.jobs.get(j.jobId)?.events ?? []).filter((e) => !seen.has(eventKey(e)));
    const events = [...j.events, ...extra].sort((a, b) => String(a.at).localeCompare(String(b.at)));
    merged.set(j.jobId, { events, ended: j.ended || extra.some(isTerminal) });
  }
  state.jobs = merged;
  if (!state.jobs.has(state.selected)) state.selected = jobs[0]?.jobId ?? "";
  renderJobs();
  renderDetail();
}

function followEvents() {
  const live = byId("live");
  const source = new EventSource("/api/events");
  source.addEventListener("hello", () => {
    live.textContent = "events: live";
    live.className = "badge badge-ok";
    // Whatever happened while the stream was down comes from the job list.
    loadJobs().catch(() => {});
  });
  source.addEventListener("job", (message) => onJobEvent(JSON.parse(message.data)));
  source.addEventListener("overflow", () => loadJobs().catch(() => {}));
  source.addEventListener("error", () => {
    live.textContent = "events: reconnecting";
    live.className = "badge badge-warn";
  });
}

// -- receipts --------------------------------------------------------------------

async function refreshReceipts() {
  const body = byId("receipts").tBodies[0];
  try {
    const { receipts } = await getJson("/api/receipts?page_size=25");
    clear(body);
    for (const stored of receipts) {
      const b = stored.body ?? {};
      const checked = verify(stored.receipt);
      const cell = checked.result ? checkBadges(checked.result) : badge(checked.error, "bad");
      body.append(
        el(
          "tr",
          { "data-job-id": b.jobId ?? "" },
          el("td", {}, shortId(b.jobId ?? "")),
          el("td", { text: formatTime(b.finishedAt) }),
          el("td", { text: enumName(b.outcome, "OUTCOME_") }),
          el("td", { text: String(b.exitCode ?? 0) }),
          el("td", { text: formatMicros(b.wallTimeUs) }),
          el("td", {}, shortId(b.executorNodeId ?? "")),
          el("td", {}, cell),
          el("td", {}, checked.result?.valid ? badge("valid", "ok") : badge("NOT valid", "bad")),
        ),
      );
    }
    setText("receipt-count", String(receipts.length));
    show("receipts-empty", receipts.length === 0);
  } catch (err) {
    show("receipts-empty", true);
    setText("receipts-empty", `cannot list receipts: ${problem(err)}`);
  }
}

// -- actions (only when the node allows them) ----------------------------------

function base64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

function newJobId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function setupActions() {
  show("actions-panel", true);
  const form = byId("submit-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = byId("module-file").files?.[0];
    if (!file) return;
    const jobId = newJobId();
    const status = byId("submit-status");
    status.textContent = `submitting job ${jobId}…`;
    show("submit-stdout", false);
    state.pinned = true;
    state.selected = jobId;
    const args = byId("args").value.trim();
    const request = {
      jobId,
      module: base64(new Uint8Array(await file.arrayBuffer())),
      manifest: {
        args: args ? args.split(/\s+/) : [],
        stdin: base64(new TextEncoder().encode(byId("stdin").value)),
        // Empty: the node's [limits.default] (proto3 JSON: 64-bit numbers as strings).
        limits: { maxFuel: byId("max-fuel").value.trim() || "0", timeoutMs: Number(byId("timeout-ms").value.trim() || 0) },
      },
    };
    byId("submit-job").disabled = true;
    try {
      const answer = await postJson("/api/jobs", request, byId("token").value);
      const result = answer.result ?? {};
      status.textContent =
        `job ${result.jobId}: ${enumName(result.outcome, "OUTCOME_")}, exit ${result.exitCode}` +
        ` on ${answer.executorNodeId.slice(0, 16)}…`;
      status.dataset.outcome = result.outcome ?? "";
      const stdout = byId("submit-stdout");
      stdout.textContent = new TextDecoder().decode(Uint8Array.from(atob(result.stdout ?? ""), (c) => c.charCodeAt(0)));
      show("submit-stdout", true);
    } catch (err) {
      status.textContent = `refused: ${problem(err)}`;
      status.dataset.outcome = "refused";
    } finally {
      byId("submit-job").disabled = false;
    }
  });
  byId("cancel-job").addEventListener("click", async () => {
    const jobId = state.selected;
    try {
      const answer = await postJson(`/api/jobs/${jobId}/cancel`, {}, byId("token").value);
      setText("cancel-status", answer.cancelled ? "cancelling…" : "it had already ended");
    } catch (err) {
      setText("cancel-status", `refused: ${problem(err)}`);
    }
  });
}

// -- start -------------------------------------------------------------------------

async function main() {
  setupVerifyPanel();
  try {
    state.allowActions = (await getJson("/api/console")).allowActions === true;
  } catch {
    state.allowActions = false;
  }
  if (state.allowActions) setupActions();
  await Promise.all([refreshNode(), refreshPeers(), refreshReceipts(), loadJobs().catch(() => {})]);
  followEvents();
  setInterval(() => {
    refreshNode();
    refreshPeers();
  }, REFRESH_MS);
  document.body.dataset.ready = "true";
}

main();
