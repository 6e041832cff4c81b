// nomyo-router dashboard. Everything comes from the router's own API; nothing from elsewhere.
// Text from backends (model names, versions, errors) only ever goes into the page through
// textContent / createTextNode: never innerHTML, so no name can become markup.
"use strict";

const state = { key: null, snapshot: null, config: null, modelsSignature: "", chartDue: 0, chartTokens: -1 };
let source = null; // the live EventSource

// ---- helpers -------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value;
    else if (name === "onclick") node.addEventListener("click", value);
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fill(id, rows, emptyText, columns) {
  const body = document.getElementById(id);
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: columns, class: "muted" }, emptyText))]));
}

function fmt(n) {
  return Number(n || 0).toLocaleString("en-US");
}

// The one time format of the page: 24-hour local time, HH:MM:SS.
function clock(epochSeconds) {
  const d = new Date(epochSeconds * 1000);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":");
}

function seconds(value) {
  if (typeof value !== "number") return "–";
  return value < 1 ? `${Math.round(value * 1000)} ms` : `${value.toFixed(value < 10 ? 2 : 1)} s`;
}

function bytes(n) {
  if (typeof n !== "number" || n <= 0) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(n < 10 && i > 0 ? 1 : 0)} ${units[i]}`;
}

function expiresIn(text) {
  if (!text) return "";
  const ms = Date.parse(text) - Date.now();
  if (!isFinite(ms)) return "";
  if (ms > 3600e3 * 24 * 365) return "kept loaded";
  const minutes = Math.round(ms / 60000);
  return minutes >= 1 ? `unloads in ${minutes} min` : "unloads soon";
}

// ---- the router key: ?api_key= in the page URL, or typed in, kept for this tab -------------

function initKey() {
  const fromUrl = new URLSearchParams(location.search).get("api_key");
  if (fromUrl) sessionStorage.setItem("nomyo-router-key", fromUrl);
  state.key = sessionStorage.getItem("nomyo-router-key");
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = document.getElementById("key-input").value.trim() || null;
    if (state.key) sessionStorage.setItem("nomyo-router-key", state.key);
    else sessionStorage.removeItem("nomyo-router-key");
    document.getElementById("key-form").hidden = true;
    start();
  });
}

// A 401 (no key) or 403 (a wrong one): stop retrying and ask, instead of "reconnecting" forever.
function askForKey(status) {
  if (source) { source.close(); source = null; }
  const live = document.getElementById("live");
  live.className = "live off";
  live.textContent = "key needed";
  document.getElementById("key-form").hidden = false;
  document.getElementById("key-status").textContent = status === 403 ? "that key was refused" : "";
  document.getElementById("key-input").focus();
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.key) headers.set("Authorization", `Bearer ${state.key}`);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401 || response.status === 403) {
    askForKey(response.status);
    throw new Error(response.status === 401 ? "the router key is needed" : "that key was refused");
  }
  return response;
}

async function apiJSON(path, options) {
  const response = await api(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${path}: ${response.status}`);
  return body;
}

// ---- the live stream -------------------------------------------------------------------------

function connect() {
  const url = "/api/usage-stream" + (state.key ? `?api_key=${encodeURIComponent(state.key)}` : "");
  const source = new EventSource(url);
  const live = document.getElementById("live");
  source.onopen = () => { live.className = "live on"; live.textContent = "live"; };
  source.onerror = () => {
    live.className = "live off";
    live.textContent = "reconnecting";
    whyNotConnected();
  };
  source.onmessage = (event) => render(JSON.parse(event.data));
  return source;
}

// EventSource hides the status of a refused connection: ask a plain request whether it is the key.
async function whyNotConnected() {
  try {
    await api("/api/usage");
  } catch (error) {
    // askForKey ran for 401/403; anything else: the browser keeps reconnecting
  }
}

function render(snapshot) {
  state.snapshot = snapshot;
  renderTiles(snapshot);
  renderBackends(snapshot);
  renderLive(snapshot);
  renderModelsNow(snapshot);
  renderTokens(snapshot);
  document.getElementById("updated").textContent = "updated " + clock(snapshot.time);
  const signature = snapshot.backends.map((b) => `${b.name}:${b.status}:${b.models}:${b.loaded.length}`).join("|");
  if (signature !== state.modelsSignature) {
    state.modelsSignature = signature;
    loadModels();
  }
  const total = snapshot.tokens.reduce((sum, row) => sum + row.total_tokens, 0);
  if (total !== state.chartTokens && Date.now() >= state.chartDue) {
    state.chartTokens = total;
    state.chartDue = Date.now() + 5000;
    loadChart();
  }
}

function renderTiles(s) {
  const up = s.backends.filter((b) => b.status === "ok").length;
  const inflight = s.backends.reduce((sum, b) => sum + b.in_flight, 0);
  const set = (id, text) => { document.getElementById(id).textContent = text; };
  set("t-backends", `${up} / ${s.backends.length}`);
  set("t-inflight", fmt(inflight));
  set("t-queued", fmt(s.queued_total));
  set("t-in", fmt(s.tokens.reduce((sum, r) => sum + r.input_tokens, 0)));
  set("t-out", fmt(s.tokens.reduce((sum, r) => sum + r.output_tokens, 0)));
  set("t-requests", fmt(s.tokens.reduce((sum, r) => sum + r.requests, 0)));
}

function renderBackends(s) {
  const rows = s.backends.map((b) => {
    const loaded = b.loaded.length
      ? b.loaded.map((m) => el("span", { class: "chip loaded", title: [bytes(m.size_vram) && `VRAM ${bytes(m.size_vram)}`, expiresIn(m.expires_at)].filter(Boolean).join(", ") },
        m.model, m.size_vram ? el("span", { class: "small" }, " " + bytes(m.size_vram)) : null))
      : [el("span", { class: "muted" }, "none")];
    return el("tr", { "data-backend": b.name },
      el("td", {}, el("strong", {}, b.name), el("div", { class: "small" }, `${b.url} · ${b.type}`)),
      el("td", {}, el("span", { class: `pill ${b.status}` }, b.status === "ok" ? "up" : "down"),
        b.error ? el("div", { class: "error-text" }, b.error) : null),
      el("td", {}, el("span", { class: `pill circuit-${b.circuit}` }, b.circuit)),
      el("td", { class: "num", "data-errors": b.name }, fmt(b.errors),
        b.errors && b.last_error ? el("div", { class: "error-text" }, `last: ${b.last_error}`) : null),
      el("td", {}, b.version || "–"),
      el("td", { class: "num" }, fmt(b.models)),
      el("td", {}, ...loaded),
      el("td", { class: "num" }, fmt(b.in_flight)));
  });
  fill("backends-body", rows, "no backends configured", 8);
}

// The slot limit of a backend-model pair: in the snapshot itself (right on the first render),
// else from /api/config, else the count (a backend a reload just removed).
function slotsFor(s, backend, model, count) {
  const limit = s.slot_limits && s.slot_limits[backend] && s.slot_limits[backend][model];
  if (limit) return limit;
  const info = state.config && state.config.endpoints.find((e) => e.name === backend);
  return (info && ((info.model_slots || {})[model] || info.max_concurrent_connections)) || count;
}

function renderLive(s) {
  const rows = [];
  for (const [backend, perModel] of Object.entries(s.usage_counts)) {
    for (const [model, count] of Object.entries(perModel)) {
      const slots = slotsFor(s, backend, model, count);
      const bar = el("span", { class: count >= slots ? "bar full" : "bar" }, el("span", {}));
      bar.firstChild.style.width = `${Math.min(100, (100 * count) / slots)}%`;
      rows.push(el("tr", { "data-live": `${backend}/${model}` }, el("td", {}, backend), el("td", {}, model),
        el("td", {}, bar, el("span", { class: "bar-label" }, `${count} / ${slots}`))));
    }
  }
  const waiting = s.queued_total ? ` (${fmt(s.queued_total)} queued)` : "";
  fill("live-body", rows, `idle: no request in flight${waiting}`, 3);
}

// Per model, once: in flight (all backends), queued, and how it answered over the last minutes.
function renderModelsNow(s) {
  const queued = s.queued || {};
  const inFlight = {};
  for (const perModel of Object.values(s.usage_counts)) {
    for (const [model, count] of Object.entries(perModel)) inFlight[model] = (inFlight[model] || 0) + count;
  }
  const recent = s.models || {};
  const names = [...new Set([...Object.keys(recent), ...Object.keys(queued), ...Object.keys(inFlight)])].sort();
  const rows = names.map((model) => {
    const r = recent[model] || {};
    return el("tr", { "data-perf": model }, el("td", {}, model),
      el("td", { class: "num" }, fmt(inFlight[model])), el("td", { class: "num" }, fmt(queued[model])),
      el("td", { class: "num" }, fmt(r.requests)),
      ...[r.ttft_p50, r.ttft_p95, r.duration_p50, r.duration_p95].map((v) => el("td", { class: "num" }, seconds(v))));
  });
  const minutes = Math.round((s.window_seconds || 300) / 60);
  fill("perf-body", rows, `no requests in the last ${minutes} minutes`, 8);
}

function renderTokens(s) {
  const rows = s.tokens.map((r) => el("tr", {}, el("td", {}, r.endpoint), el("td", {}, r.model),
    el("td", { class: "num" }, fmt(r.input_tokens)), el("td", { class: "num" }, fmt(r.output_tokens)),
    el("td", { class: "num" }, fmt(r.total_tokens)), el("td", { class: "num" }, fmt(r.requests))));
  fill("tokens-body", rows, "no tokens counted yet", 6);
}

// ---- models and their management -----------------------------------------------------------

async function loadModels() {
  try {
    state.config = await apiJSON("/api/config");
  } catch (error) {
    fill("models-body", [], `cannot load the models: ${error.message}`, 4);
    return;
  }
  document.getElementById("router-version").textContent = `v${state.config.router_version}`;
  const models = new Map();
  for (const endpoint of state.config.endpoints) {
    for (const name of endpoint.model_names || []) {
      if (!models.has(name)) models.set(name, { installed: [], loaded: [] });
      models.get(name).installed.push(endpoint.name);
    }
    for (const loaded of endpoint.loaded || []) {
      if (models.has(loaded.model)) models.get(loaded.model).loaded.push(endpoint.name);
    }
  }
  const rows = [...models.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([name, where]) =>
    el("tr", { "data-model": name }, el("td", {}, name),
      el("td", {}, ...where.installed.map((b) => el("span", { class: "chip" }, b))),
      el("td", {}, ...(where.loaded.length ? where.loaded.map((b) => el("span", { class: "chip loaded" }, b))
        : [el("span", { class: "muted" }, "–")])),
      el("td", {}, el("button", { class: "link", type: "button", onclick: () => prefill("copy-source", name) }, "copy"),
        el("button", { class: "link", type: "button", onclick: () => prefill("delete-model", name) }, "delete"))));
  fill("models-body", rows, "no models on any healthy backend", 4);
}

function prefill(id, value) {
  const input = document.getElementById(id);
  input.value = value;
  input.focus();
}

async function pull(event) {
  event.preventDefault();
  const model = document.getElementById("pull-model").value.trim();
  const status = document.getElementById("pull-status");
  const progress = document.getElementById("pull-progress");
  progress.hidden = false;
  progress.removeAttribute("value");
  status.textContent = `pulling ${model}…`;
  try {
    const response = await api("/api/pull", { method: "POST", body: JSON.stringify({ model, stream: true }) });
    if (!response.ok) throw new Error((await response.json().catch(() => ({}))).error || response.status);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const line of lines.filter((l) => l.trim())) showPull(JSON.parse(line), status, progress);
    }
    if (buffer.trim()) showPull(JSON.parse(buffer), status, progress);
  } catch (error) {
    status.textContent = `pull failed: ${error.message}`;
  }
  loadModels();
}

function showPull(line, status, progress) {
  if (line.error) throw new Error(line.error);
  status.textContent = line.status || "";
  if (line.total) {
    progress.max = line.total;
    progress.value = line.completed || 0;
  }
  if (line.status === "success") { progress.max = 1; progress.value = 1; }
}

async function simpleAction(event, statusId, path, method, body, done) {
  event.preventDefault();
  const status = document.getElementById(statusId);
  status.textContent = "working…";
  try {
    const response = await api(path, { method, body: JSON.stringify(body) });
    if (!response.ok) throw new Error((await response.json().catch(() => ({}))).error || response.status);
    status.textContent = done;
  } catch (error) {
    status.textContent = `failed: ${error.message}`;
  }
  loadModels();
}

function initForms() {
  document.getElementById("pull-form").addEventListener("submit", pull);
  document.getElementById("copy-form").addEventListener("submit", (event) => {
    const source = document.getElementById("copy-source").value.trim();
    const destination = document.getElementById("copy-destination").value.trim();
    simpleAction(event, "copy-status", "/api/copy", "POST", { source, destination }, `copied ${source} to ${destination}`);
  });
  document.getElementById("delete-form").addEventListener("submit", (event) => {
    const model = document.getElementById("delete-model").value.trim();
    if (!confirm(`Delete ${model} from every backend?`)) { event.preventDefault(); return; }
    simpleAction(event, "delete-status", "/api/delete", "DELETE", { model }, `deleted ${model}`);
  });
}

// ---- the usage chart: a hand-drawn SVG, input and output stacked per minute ----------------

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function loadChart() {
  try {
    drawChart(await apiJSON("/api/time_series?minutes=60"));
  } catch (error) {
    document.getElementById("chart").replaceChildren(el("span", { class: "muted" }, `no chart: ${error.message}`));
  }
}

function drawChart(data) {
  const width = 600, height = 180, left = 44, bottom = 20, top = 8;
  const slots = 60, step = (width - left) / slots;
  const byMinute = new Map(data.time_series.map((row) => [row.timestamp, row]));
  const max = Math.max(1, ...data.time_series.map((row) => row.total_tokens));
  const scale = (height - bottom - top) / max;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img",
    "aria-label": "tokens per minute" });
  root.append(svg("line", { class: "axis", x1: left, y1: height - bottom, x2: width, y2: height - bottom }));
  root.append(svg("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, fmt(max)));
  root.append(svg("text", { x: left - 4, y: height - bottom, "text-anchor": "end" }, "0"));
  for (let i = 0; i < slots; i++) {
    const minute = data.since + i * 60;
    const x = left + i * step;
    const row = byMinute.get(minute);
    if (row) {
      const hIn = row.input_tokens * scale, hOut = row.output_tokens * scale;
      const group = svg("g", {});
      group.append(svg("title", {}, `${clock(minute)}: ${fmt(row.input_tokens)} in, ${fmt(row.output_tokens)} out, ${fmt(row.requests)} requests`));
      group.append(svg("rect", { class: "in", x: x + 1, width: step - 2, y: height - bottom - hIn, height: hIn }));
      group.append(svg("rect", { class: "out", x: x + 1, width: step - 2, y: height - bottom - hIn - hOut, height: hOut }));
      root.append(group);
    }
    if (i % 15 === 0 || i === slots - 1) {
      const label = clock(minute);
      const anchor = i === 0 ? "start" : i === slots - 1 ? "end" : "middle";
      root.append(svg("text", { x: i === slots - 1 ? width : x + step / 2, y: height - 6, "text-anchor": anchor }, label));
    }
  }
  document.getElementById("chart").replaceChildren(root);
}

// ---- start ---------------------------------------------------------------------------------

function start() {
  if (source) source.close();
  loadModels();
  loadChart();
  source = connect();
}

document.addEventListener("DOMContentLoaded", () => {
  initKey();
  initForms();
  start();
});
