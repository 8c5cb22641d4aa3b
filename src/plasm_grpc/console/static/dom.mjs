// DOM helpers. Everything a node or a peer says is untrusted text: it is only
// ever set with textContent (never innerHTML), so it cannot become markup.

/** An element with attributes/properties and children (strings become text nodes). */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "className") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key === "title") node.title = String(value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

export function byId(id) {
  const node = document.getElementById(id);
  if (node === null) throw new Error(`no element #${id}`);
  return node;
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

export function setText(id, text) {
  byId(id).textContent = String(text);
}

export function show(id, visible) {
  byId(id).hidden = !visible;
}

/** `dl` rows from [term, value] pairs; a value may be a node or text. */
export function facts(dl, rows) {
  clear(dl);
  for (const [term, value] of rows) {
    dl.append(el("dt", { text: term }), el("dd", {}, value instanceof Node ? value : String(value)));
  }
}

export function mono(text, title) {
  return el("code", { className: "mono", text, title: title ?? text });
}

/** The first 16 hex digits of a 64-hex id, the whole id as a tooltip. */
export function shortId(id) {
  if (!id) return el("span", { className: "muted", text: "(none)" });
  return mono(id.length > 16 ? `${id.slice(0, 16)}…` : id, id);
}

export function badge(text, kind) {
  return el("span", { className: `badge badge-${kind}`, text });
}

export function formatBytes(value) {
  let n = Number(value);
  if (!Number.isFinite(n) || n <= 0) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let unit = 0;
  while (n >= 1024 && unit < units.length - 1) {
    n /= 1024;
    unit += 1;
  }
  return `${n >= 10 || unit === 0 ? Math.round(n) : n.toFixed(1)} ${units[unit]}`;
}

/** An RFC 3339 timestamp (proto3 JSON) as local time; "" when absent. */
export function formatTime(value) {
  if (!value) return "";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
}

export function formatMicros(value) {
  const us = Number(value);
  if (!Number.isFinite(us)) return "";
  return us >= 1000 ? `${(us / 1000).toFixed(us >= 100000 ? 0 : 1)} ms` : `${us} µs`;
}

/** An enum name without its prefix, lower case: "OUTCOME_SUCCESS" -> "success". */
export function enumName(value, prefix) {
  return String(value ?? "").replace(prefix, "").toLowerCase().replaceAll("_", " ");
}
