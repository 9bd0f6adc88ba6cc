// The edge dashboard. Plain DOM code: every piece of data reaches the page through
// textContent or element attributes, never as HTML. The admin key lives in this tab's
// sessionStorage and goes only to this origin's /admin/* (relative URLs, nothing else).
"use strict";

const KEY_STORE = "edge-admin-key";
const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const NAME_RE = /^[A-Za-z0-9_.-]{1,128}$/;
const USAGE_FIELDS = ["requests", "cache_hits", "prompt_tokens", "completion_tokens", "cost_usd",
  "saved_usd"];

const state = { view: null, window: "5m", timer: null, usageRows: [], usageGroups: [],
  sort: { field: null, dir: 1 } };

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  return node;
}

// -- talking to edge -------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  if (!path.startsWith("/admin/")) throw new Error("the dashboard talks to /admin/* only");
  const key = sessionStorage.getItem(KEY_STORE);
  const headers = { Authorization: "Bearer " + key };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method: options.method || "GET", headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer" });
  if (response.status === 204) return null;
  const payload = await response.json();
  if (!response.ok) {
    const message = (payload && payload.error && payload.error.message) || response.statusText;
    if (response.status === 401) logout("The admin key was refused; log in again.");
    throw new ApiError(response.status, message);
  }
  return payload;
}

// -- formatting ------------------------------------------------------------------------

const fmt = {
  int: (n) => (n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en-US")),
  rate: (n) => (n === null || n === undefined ? "–" : n.toFixed(n < 10 ? 2 : 1)),
  pct: (n) => (n === null || n === undefined ? "–" : (100 * n).toFixed(1) + " %"),
  ms: (n) => (n === null || n === undefined ? "–" : n.toFixed(n < 100 ? 1 : 0) + " ms"),
  usd: (n) => (n === null || n === undefined ? "–" : "$" + n.toFixed(n !== 0 && n < 0.01 ? 6 : 4)),
  time: (t) => (t ? t.replace("T", " ").replace("Z", " UTC") : "never"),
};

// -- login and navigation --------------------------------------------------------------

function loggedIn() { return Boolean(sessionStorage.getItem(KEY_STORE)); }

function logout(message) {
  sessionStorage.removeItem(KEY_STORE);
  stopPolling();
  $("login-error").textContent = message || "";
  render();
}

async function login(event) {
  event.preventDefault();
  const key = $("admin-key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORE, key);
  try {
    await api("/admin/stats?window=5m");
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 401) {
      $("login-error").textContent = "Could not reach edge: " + error.message;
    }
    return;
  }
  $("admin-key").value = "";
  $("login-error").textContent = "";
  if (!location.hash) location.hash = "#overview";
  render();
}

function currentView() {
  const name = location.hash.replace("#", "");
  return ["overview", "keys", "usage", "providers"].includes(name) ? name : "overview";
}

function render() {
  const authed = loggedIn();
  $("login").hidden = authed;
  $("nav").hidden = !authed;
  $("logout").hidden = !authed;
  const view = authed ? currentView() : null;
  for (const section of document.querySelectorAll(".view")) {
    section.hidden = section.id !== "view-" + view;
  }
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  stopPolling();
  state.view = view;
  if (view === "overview") startPolling(refreshOverview);
  else if (view === "providers") startPolling(refreshProviders);
  else if (view === "keys") refreshKeys();
  else if (view === "usage") refreshUsage();
  if (!authed) $("admin-key").focus();
}

function startPolling(refresh) {
  const tick = async () => {
    const view = state.view;
    try { await refresh(); } catch (error) { showError(view, error); }
    if (state.view === view && loggedIn()) state.timer = setTimeout(tick, POLL_MS);
  };
  tick();
}

function stopPolling() {
  if (state.timer !== null) clearTimeout(state.timer);
  state.timer = null;
}

function showError(view, error) {
  const target = $(view + "-error") || $("overview-updated");
  if (target) target.textContent = error.message;
}

// -- overview --------------------------------------------------------------------------

function card(label, value, id) {
  return el("div", { class: "card" }, el("div", { class: "label", text: label }),
    el("div", { class: "value", text: value, "data-stat": id }));
}

async function refreshOverview() {
  const stats = await api("/admin/stats?window=" + encodeURIComponent(state.window));
  if (state.view !== "overview") return;
  const c = stats.cache;
  $("cards").replaceChildren(
    card("Requests / s", fmt.rate(stats.requests_per_s), "requests_per_s"),
    card("Requests", fmt.int(stats.requests), "requests"),
    card("L1 hit rate", fmt.pct(c.hit_rate_l1), "hit_rate_l1"),
    card("L2 hit rate", fmt.pct(c.hit_rate_l2), "hit_rate_l2"),
    card("p50 latency", fmt.ms(stats.latency_ms.p50), "p50"),
    card("p99 latency", fmt.ms(stats.latency_ms.p99), "p99"),
    card("Errors", fmt.int(stats.errors.total), "errors"),
    card("Spent", fmt.usd(stats.cost_usd), "cost_usd"),
    card("Saved by cache", fmt.usd(stats.saved_usd), "saved_usd"),
  );
  drawBars($("chart-requests"), stats.series, [
    ["miss", (b) => b.requests - b.hits_l1 - b.hits_l2 - b.errors],
    ["l1", (b) => b.hits_l1], ["l2", (b) => b.hits_l2], ["err", (b) => b.errors]], fmt.int);
  drawBars($("chart-cost"), stats.series, [["miss", (b) => b.cost_usd], ["l1", (b) => b.saved_usd]],
    fmt.usd);
  const errors = [];
  for (const [status, n] of Object.entries(stats.errors.by_status)) {
    errors.push(el("li", {}, "HTTP " + status + ": " + fmt.int(n) + " in the ledger"));
  }
  for (const [type, n] of Object.entries(stats.errors.by_type)) {
    errors.push(el("li", {}, type + ": " + fmt.int(n) + " (counted since " +
      fmt.time(stats.errors.by_type_since) + ")"));
  }
  $("errors").replaceChildren(errors.length ? el("ul", {}, ...errors)
    : el("p", { class: "muted", text: "No errors in this window." }));
  $("overview-updated").textContent = "Window " + fmt.time(stats.since) + " to " +
    fmt.time(stats.until) + "; updated " + new Date().toLocaleTimeString() + ".";
}

// Stacked bars, one per bucket; each layer is [css class, value of a bucket].
function drawBars(container, series, layers, format) {
  const width = 600, height = 160, pad = 18;
  const totals = series.map((b) => layers.reduce((sum, [, get]) => sum + Math.max(0, get(b)), 0));
  const top = Math.max(...totals, 0);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none",
    role: "img", "aria-label": "peak " + format(top) + " per bucket" });
  chart.append(svg("line", { x1: 0, y1: height - pad, x2: width, y2: height - pad, class: "axis" }));
  const step = width / Math.max(series.length, 1);
  series.forEach((bucket, i) => {
    let y = height - pad;
    for (const [cls, get] of layers) {
      const value = Math.max(0, get(bucket));
      if (!value || !top) continue;
      const h = (value / top) * (height - 2 * pad);
      y -= h;
      const rect = svg("rect", { x: i * step + 1, y, width: Math.max(step - 2, 1), height: h, class: cls });
      const title = svg("title");
      title.textContent = bucket.t + ": " + format(value);
      rect.append(title);
      chart.append(rect);
    }
  });
  container.replaceChildren(chart, el("p", { class: "legend", text: "tallest bar: " + format(top) }));
}

// -- keys ------------------------------------------------------------------------------

async function refreshKeys() {
  $("keys-error").textContent = "";
  let payload;
  try { payload = await api("/admin/keys"); } catch (error) { showError("keys", error); return; }
  const rows = payload.data.map(keyRow);
  $("keys-table").tBodies[0].replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", { colspan: "9", class: "muted", text: "No keys yet." }))]));
}

function keyRow(key) {
  const spend = el("td", {});
  if (key.budget_usd !== null) {
    const meter = el("meter", { min: "0", max: String(key.budget_usd || 1e-9),
      value: String(Math.min(key.spend_usd, key.budget_usd || 1e-9)) });
    spend.append(meter, " ", fmt.usd(key.spend_usd) + " / " + fmt.usd(key.budget_usd) + " " +
      key.budget_period);
  } else {
    spend.append(fmt.usd(key.spend_usd) + " (no budget)");
  }
  const actions = el("div", { class: "actions" });
  if (key.source === "admin") {
    const rotate = el("button", { type: "button", class: "quiet", text: "Rotate",
      "aria-label": "Rotate " + key.name });
    rotate.addEventListener("click", () => rotateKey(key.name));
    const revoke = el("button", { type: "button", class: "danger", text: "Revoke",
      "aria-label": "Revoke " + key.name });
    revoke.addEventListener("click", () => {
      if (revoke.dataset.armed) { revokeKey(key.name); return; }
      revoke.dataset.armed = "1";
      revoke.textContent = "Confirm revoke";
    });
    actions.append(rotate, revoke);
  } else {
    actions.append(el("span", { class: "muted", text: "in the config file" }));
  }
  return el("tr", { "data-key": key.name },
    el("td", { text: key.name }), el("td", { text: key.source }),
    el("td", {}, el("code", { text: key.key_prefix || "–" })), spend,
    el("td", { class: "num", text: fmt.int(key.rpm) }), el("td", { class: "num", text: fmt.int(key.tpm) }),
    el("td", { text: key.models === null ? "any" : key.models.join(", ") }),
    el("td", { text: key.expires_at ? fmt.time(key.expires_at) : "never" }), el("td", {}, actions));
}

function showSecret(payload) {
  $("secret-name").textContent = payload.name;
  $("secret-value").textContent = payload.key;
  $("secret-copied").textContent = "";
  $("secret").hidden = false;
  $("secret-copy").focus();
}

async function createKey(event) {
  event.preventDefault();
  const error = $("create-error");
  error.textContent = "";
  const name = $("new-name").value;
  if (!NAME_RE.test(name)) {
    error.textContent = "The name \u201c" + name + "\u201d is not allowed: use 1 to 128 letters, " +
      "digits, '_', '.' or '-'.";
    return;
  }
  const body = { name, budget_period: $("new-period").value };
  for (const [field, id, parse] of [["rpm", "new-rpm", parseInt], ["tpm", "new-tpm", parseInt],
    ["budget_usd", "new-budget", parseFloat]]) {
    const text = $(id).value.trim();
    if (text) body[field] = parse(text, 10);
  }
  const models = $("new-models").value.split(",").map((m) => m.trim()).filter(Boolean);
  if (models.length) body.models = models;
  try {
    showSecret(await api("/admin/keys", { method: "POST", body }));
  } catch (failure) { error.textContent = failure.message; return; }
  $("create-form").reset();
  await refreshKeys();
}

async function rotateKey(name) {
  try {
    showSecret(await api("/admin/keys/" + encodeURIComponent(name) + "/rotate", { method: "POST" }));
  } catch (error) { showError("keys", error); }
  await refreshKeys();
}

async function revokeKey(name) {
  try {
    await api("/admin/keys/" + encodeURIComponent(name), { method: "DELETE" });
  } catch (error) { showError("keys", error); }
  await refreshKeys();
}

async function copySecret() {
  const text = $("secret-value").textContent;
  try {
    await navigator.clipboard.writeText(text);
    $("secret-copied").textContent = "Copied.";
  } catch (error) {
    const range = document.createRange();
    range.selectNodeContents($("secret-value"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    $("secret-copied").textContent = "Selected: press Ctrl+C (or \u2318C) to copy.";
  }
}

function hideSecret() {
  $("secret-value").textContent = "";
  $("secret").hidden = true;
}

// -- usage -----------------------------------------------------------------------------

async function refreshUsage(event) {
  if (event) event.preventDefault();
  $("usage-error").textContent = "";
  const groups = [...document.querySelectorAll("input[name=group]:checked")].map((i) => i.value);
  const query = new URLSearchParams({ since: $("usage-since").value });
  if (query.get("since") === "custom") {
    // datetime-local is the browser's local time; the API takes RFC 3339 (UTC here)
    const from = $("usage-from").value, to = $("usage-to").value;
    if (!from) { $("usage-error").textContent = "Choose a start time (From)."; return; }
    query.set("since", new Date(from).toISOString());
    if (to) query.set("until", new Date(to).toISOString());
  }
  if (groups.length) query.set("group_by", groups.join(","));
  let payload;
  try { payload = await api("/admin/usage?" + query); } catch (error) { showError("usage", error); return; }
  state.usageGroups = groups.length ? groups : ["key"];
  state.usageRows = payload.data;
  $("usage-range").textContent = "From " + fmt.time(payload.since) + " to " + fmt.time(payload.until) +
    ": " + payload.data.length + " rows.";
  drawUsage();
}

function usageColumns() { return [...state.usageGroups, ...USAGE_FIELDS]; }

function drawUsage() {
  const columns = usageColumns();
  const rows = [...state.usageRows];
  const { field, dir } = state.sort;
  if (field && columns.includes(field)) {
    rows.sort((a, b) => {
      const x = a[field], y = b[field];
      if (x === y) return 0;
      if (x === null || x === undefined) return -dir;
      if (y === null || y === undefined) return dir;
      return (x < y ? -1 : 1) * dir;
    });
  }
  const head = columns.map((column) => {
    const sorted = field === column ? (dir > 0 ? "ascending" : "descending") : "none";
    const button = el("button", { type: "button", text: column + (sorted === "ascending" ? " \u25b2"
      : sorted === "descending" ? " \u25bc" : "") });
    button.addEventListener("click", () => {
      state.sort = { field: column, dir: field === column ? -dir : 1 };
      drawUsage();
    });
    return el("th", { scope: "col", "aria-sort": sorted,
      class: USAGE_FIELDS.includes(column) ? "num" : "" }, button);
  });
  $("usage-table").tHead.rows[0].replaceChildren(...head);
  $("usage-table").tBodies[0].replaceChildren(...rows.map((row) => el("tr", {},
    ...columns.map((column) => {
      const value = row[column];
      const text = value === null || value === undefined ? "(none)" :
        column.endsWith("_usd") ? fmt.usd(value) : USAGE_FIELDS.includes(column) ? fmt.int(value)
          : String(value);
      return el("td", { class: USAGE_FIELDS.includes(column) ? "num" : "", text });
    }))));
}

function csvCell(value) {
  const text = value === null || value === undefined ? "" : String(value);
  // quote what CSV needs quoted; a text starting with = + or @ would be a spreadsheet
  // formula (a model name is whatever a client sent), so it gets a leading apostrophe
  const safe = /^[=+@\t\r]/.test(text) && typeof value === "string" ? "'" + text : text;
  return /[",\r\n]/.test(safe) ? '"' + safe.replace(/"/g, '""') + '"' : safe;
}

function usageCsv() {
  const columns = usageColumns();
  const lines = [columns.join(",")];
  for (const row of state.usageRows) lines.push(columns.map((c) => csvCell(row[c])).join(","));
  return lines.join("\r\n") + "\r\n";
}

function exportCsv() {
  const blob = new Blob([usageCsv()], { type: "text/csv" });
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: "edge-usage.csv" });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

// -- providers -------------------------------------------------------------------------

async function refreshProviders() {
  const payload = await api("/admin/providers");
  if (state.view !== "providers") return;
  $("providers-error").textContent = "";
  $("providers-table").tBodies[0].replaceChildren(...payload.data.map((p) => {
    const errors = Object.entries(p.errors).map(([kind, n]) => kind + ": " + n).join(", ") || "none";
    const circuit = p.circuit.state + (p.circuit.consecutive_failures ? " (" +
      p.circuit.consecutive_failures + " failures in a row)" : "");
    return el("tr", { "data-provider": p.name }, el("td", { text: p.name }), el("td", { text: p.kind }),
      el("td", { class: p.healthy ? "ok" : "bad", text: p.healthy ? "healthy" : "unhealthy" }),
      el("td", { text: circuit }),
      el("td", { class: "num", text: p.keys.available + " / " + p.keys.total }),
      el("td", { text: errors }),
      el("td", { text: p.last_error_s_ago === null ? "never" : fmt.int(p.last_error_s_ago) + " s ago" }));
  }));
  $("deployments-table").tBodies[0].replaceChildren(...payload.deployments.map((d) => el("tr", {},
    el("td", { text: d.provider }), el("td", { text: d.model }),
    el("td", { class: "num", text: d.latency_ewma_ms === null ? "–" : d.latency_ewma_ms.toFixed(1) }),
    el("td", { class: "num", text: fmt.int(d.samples) }), el("td", { class: "num", text: fmt.int(d.inflight) }))));
}

// -- wiring ----------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => logout(""));
  $("create-form").addEventListener("submit", createKey);
  $("secret-copy").addEventListener("click", copySecret);
  $("secret-done").addEventListener("click", hideSecret);
  $("usage-form").addEventListener("submit", refreshUsage);
  $("usage-csv").addEventListener("click", exportCsv);
  $("usage-since").addEventListener("change", () => {
    $("usage-custom").hidden = $("usage-since").value !== "custom";
  });
  for (const button of document.querySelectorAll("[data-window]")) {
    button.addEventListener("click", () => {
      state.window = button.dataset.window;
      for (const other of document.querySelectorAll("[data-window]")) {
        other.setAttribute("aria-pressed", String(other === button));
      }
      render();
    });
  }
  window.addEventListener("hashchange", render);
  render();
});
