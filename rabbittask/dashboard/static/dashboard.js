// rabbittask dashboard: polls /api/state every 2 s and renders it; DLQ actions are POSTs with the CSRF token.
// Everything that comes from the broker (task names, tracebacks, bodies) is set as text, never as HTML.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const POLL_MS = 2000;
const COLORS = { succeeded: "#2e7d32", failed: "#c62828", retried: "#ef6c00", received: "#1565c0", started: "#6a1b9a" };
let chart = null;
let chartStates = "";
let chartSpan = [0, 3600];
let dlqQueue = null;
let dlqTotal = 0;
let dlqName = "";
let runtimeTask = null;
let runtimeChart = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

function num(value) {
  return value === null || value === undefined ? "-" : String(value);
}

function duration(seconds) {
  seconds = Math.floor(seconds);
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  const pad = (x) => String(x).padStart(2, "0");
  return h ? `${h}h${pad(m)}m${pad(s)}s` : `${m}m${pad(s)}s`;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "?";
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
    if (seconds >= size) return `${Math.floor(seconds / size)}${unit}`;
  }
  return `${Math.floor(seconds)}s`;
}

function notice(text, isError) {
  const box = document.getElementById("notice");
  box.textContent = text;
  box.className = isError ? "error" : "ok";
  box.hidden = false;
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": CSRF },
    body: JSON.stringify(body),
  };
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (response.status === 401) throw new Error("not logged in (was the dashboard restarted?): open the URL it printed again");
  const data = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function renderWorkers(workers) {
  fill(document.querySelector("#workers tbody"), workers.map((w) => el("tr", { "data-pid": w.pid },
    el("td", {}, w.host), el("td", {}, w.pid), el("td", {}, w.queues.join(", ")),
    el("td", { class: "n" }, w.children), el("td", { class: "n" }, w.done),
    el("td", { class: "n" }, w.failed), el("td", { class: "n" }, w.retried),
    el("td", { class: "n" }, w.in_flight), el("td", {}, duration(w.uptime_s)))));
  document.getElementById("no-workers").hidden = workers.length > 0;
}

function renderUnroutable(unroutable) {
  const ready = unroutable ? unroutable.ready : null;
  document.getElementById("unroutable-note").hidden = !ready;
  document.getElementById("unroutable").textContent = num(ready);
  document.getElementById("unroutable-queue").textContent = unroutable ? unroutable.queue : "";
}

function renderQueues(queues, delayed) {
  fill(document.querySelector("#queues tbody"), queues.flatMap((q) => [el("tr", { "data-queue": q.name },
    el("td", {}, q.name, q.exists ? "" : el("span", { class: "bad" }, " (missing)")),
    el("td", { class: "n" }, num(q.ready)), el("td", { class: "n" }, num(q.unacked)),
    el("td", { class: q.consumers ? "n" : "n bad" }, q.consumers),
    el("td", { class: q.dlq_ready ? "n bad dlq-depth" : "n dlq-depth" }, num(q.dlq_ready)),
    el("td", {}, el("button", { type: "button", class: "browse", onclick: () => openDlq(q.name) }, "browse"))),
    ...(q.partitions || []).map(renderPartition)]));
  document.getElementById("delayed").textContent = num(delayed);
}

function renderChords(chords) {
  fill(document.querySelector("#chords tbody"), chords.map((c) => el("tr", { "data-chord": c.id },
    el("td", {}, c.id), el("td", { class: "n" }, c.done), el("td", { class: "n" }, c.total))));
  document.getElementById("chords-section").hidden = chords.length === 0;
}

// A partition of a partition_by / fair_by queue, under its queue: depth, consumers, the child active on it.
function renderPartition(p) {
  return el("tr", { class: "partition", "data-partition": p.name },
    el("td", {}, "\u21b3 " + p.name), el("td", { class: "n" }, num(p.ready)), el("td", {}, ""),
    el("td", { class: p.consumers ? "n" : "n bad" }, num(p.consumers)),
    el("td", { colspan: "2", class: "muted" }, p.active ? `active on ${p.active}` : ""));
}

function renderChart(rates) {
  const order = ["received", "started", "succeeded", "retried", "failed"];  // later ones are drawn on top
  const rank = (s) => (order.includes(s) ? order.indexOf(s) : order.length);
  const states = Object.keys(rates.series).sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  const data = [rates.minutes, ...states.map((s) => rates.series[s])];
  const box = document.getElementById("chart");
  const last = rates.minutes[rates.minutes.length - 1];
  chartSpan = [last - 59.5 * 60, last + 30];  // always the last hour (whole bars), even while history is shorter
  if (chart === null || chartStates !== states.join()) {
    if (chart !== null) chart.destroy();
    chartStates = states.join();
    chart = new uPlot({
      width: Math.max(320, box.clientWidth), height: 220,
      scales: { x: { time: true, range: () => chartSpan }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
      series: [{}, ...states.map((s) => ({
        label: s, stroke: COLORS[s] || "#555", fill: `${COLORS[s] || "#555555"}55`, width: 1,
        paths: uPlot.paths.bars({ size: [0.8, 14] }), points: { show: false },
      }))],
      axes: [{}, { label: "tasks / min" }],
    }, data, box);
  } else {
    chart.setData(data);
  }
}

function renderTotals(totals) {
  const parts = Object.entries(totals).sort().map(([state, n]) => el("span", { class: "total", id: `total-${state}` }, `${state} ${n}`));
  fill(document.getElementById("totals"), parts.length ? [el("span", { class: "muted" }, "since start: "), ...parts] : []);
}

const opened = new Set();  // tracebacks the reader opened stay open across refreshes

function traceback(key, text) {
  if (!text) return el("span", { class: "muted" }, "no traceback");
  const box = el("details", { ontoggle: () => (box.open ? opened.add(key) : opened.delete(key)) },
    el("summary", {}, "traceback"), el("pre", {}, text));
  box.open = opened.has(key);
  return box;
}

function renderFailures(failures) {
  fill(document.getElementById("failures"), failures.map((f) => el("li", { "data-id": f.id },
    el("div", {},
      el("span", { class: "muted" }, new Date(f.ts * 1000).toLocaleTimeString()), " ",
      el("strong", {}, f.task), " ", el("code", {}, f.id), " ",
      el("span", { class: "bad" }, f.reason || ""), f.exc_type ? ` ${f.exc_type}: ${f.exc_message || ""}` : "",
      el("span", { class: "muted" }, ` on ${f.host} pid ${f.pid}`)),
    traceback(`failure:${f.id}:${f.ts}`, f.traceback))));
  document.getElementById("no-failures").hidden = failures.length > 0;
}

async function refresh() {
  try {
    const state = await api("/api/state");
    renderWorkers(state.workers);
    renderQueues(state.queues, state.delayed);
    renderChords(state.workflows || []);
    renderUnroutable(state.unroutable);
    renderChart(state.rates);
    renderTotals(state.totals);
    renderFailures(state.failures);
    renderTaskStats(state.task_stats);
    renderProgress(state.in_progress);
    if (typeof renderViews === "function") renderViews(state);  // views.js
    if (runtimeTask !== null) await loadRuntimes(runtimeTask);
    const pill = document.getElementById("connection");
    pill.textContent = state.events_error ? `events: ${state.events_error}` : "live";
    pill.className = state.events_error ? "pill bad" : "pill ok";
    document.getElementById("updated").textContent = `updated ${new Date(state.now * 1000).toLocaleTimeString()}`;
  } catch (e) {
    const pill = document.getElementById("connection");
    pill.textContent = `dashboard unreachable: ${e.message}`;
    pill.className = "pill bad";
  }
}

async function openDlq(queue) {
  dlqQueue = queue;
  document.getElementById("dlq-confirm").hidden = true;
  await loadDlq();
  document.getElementById("dlq").scrollIntoView({ block: "nearest" });
}

async function loadDlq() {
  if (dlqQueue === null) return;
  let data;
  try {
    data = await api(`/api/dlq/${encodeURIComponent(dlqQueue)}`);
  } catch (e) {
    notice(`cannot read the dead letters of ${dlqQueue}: ${e.message}`, true);
    return;
  }
  dlqTotal = data.total;
  dlqName = data.dlq;
  const shown = data.messages.length < data.total ? `, first ${data.messages.length}` : "";
  document.getElementById("dlq-name").textContent = `· ${data.dlq}: ${data.total} message(s)${shown}`;
  document.getElementById("dlq-hint").hidden = true;
  document.getElementById("dlq-actions").hidden = false;
  document.getElementById("dlq-messages").hidden = data.total === 0;
  fill(document.querySelector("#dlq-messages tbody"), data.messages.map((m) => el("tr", { "data-id": m.id },
    el("td", {}, el("code", {}, m.id)), el("td", {}, m.task),
    el("td", {}, m.reason, m.exc_type ? `: ${m.exc_type}: ${m.exc_message}` : "", traceback(`dlq:${m.id}`, m.traceback)),
    el("td", { class: "n" }, m.attempts), el("td", {}, age(m.age_s)),
    el("td", {}, el("button", { type: "button", class: "replay", onclick: () => replay([m.id]) }, "Replay")))));
}

async function replay(ids) {
  try {
    const result = await api(`/api/dlq/${encodeURIComponent(dlqQueue)}/replay`, ids ? { ids } : { all: true });
    const missing = result.missing.length ? `; not found: ${result.missing.join(", ")}` : "";
    notice(`replayed ${result.replayed.length} message(s) to ${dlqQueue}${missing}`, result.missing.length > 0);
  } catch (e) {
    notice(`replay refused: ${e.message}`, true);
  }
  await loadDlq();
  await refresh();
}

async function purge() {
  document.getElementById("dlq-confirm").hidden = true;
  try {
    const result = await api(`/api/dlq/${encodeURIComponent(dlqQueue)}/purge`, { confirm: dlqName });
    notice(`purged ${result.purged} message(s) from ${dlqName}`, false);
  } catch (e) {
    notice(`purge refused: ${e.message}`, true);
  }
  await loadDlq();
  await refresh();
}

function secs(value) {
  if (value === null || value === undefined) return "-";
  return value < 1 ? `${(value * 1000).toFixed(1)} ms` : `${value.toFixed(2)} s`;
}

function progressCell(p) {
  if (!p) return "";
  const bar = el("progress", { max: String(p.total), value: String(p.done) });
  return el("span", { class: "progress" }, bar, ` ${p.done}/${p.total} (${Math.round((100 * p.done) / p.total)}%)`);
}

function renderProgress(rows) {
  fill(document.querySelector("#in-progress tbody"), rows.map((t) => el("tr", { "data-id": t.id },
    el("td", {}, t.task),
    el("td", {}, el("a", { href: "#", class: "task-link", onclick: (e) => { e.preventDefault(); openTask(t.id); } }, t.id)),
    el("td", {}, progressCell(t.progress)), el("td", {}, t.progress.note || ""), el("td", {}, t.worker ?? ""),
    el("td", { class: "muted" }, when(t.progress.ts)))));
  document.getElementById("no-progress").hidden = rows.length > 0;
}

function renderTaskStats(rows) {
  fill(document.querySelector("#task-stats tbody"), rows.map((r) => el("tr", { "data-task": r.task },
    el("td", {}, r.task), el("td", { class: "n" }, r.count), el("td", { class: "n" }, r.succeeded),
    el("td", { class: r.failed ? "n bad" : "n" }, r.failed),
    el("td", { class: "n" }, r.failure_rate === null ? "-" : `${(r.failure_rate * 100).toFixed(1)}%`),
    el("td", { class: "n" }, r.retried), el("td", { class: "n" }, secs(r.p50_s)),
    el("td", { class: "n" }, secs(r.p95_s)), el("td", { class: "n" }, secs(r.p99_s)),
    el("td", {}, el("button", { type: "button", class: "runtimes", onclick: () => loadRuntimes(r.task) }, "chart")))));
}

async function loadRuntimes(task) {
  let data;
  try {
    data = await api(`/api/stats/${encodeURIComponent(task)}`);
  } catch (e) {
    notice(`cannot chart ${task}: ${e.message}`, true);
    return;
  }
  const title = document.getElementById("runtime-title");
  title.hidden = false;
  title.textContent = `${task}: runtime per minute (seconds)`;
  const box = document.getElementById("runtime-chart");
  const series = ["p50_s", "p95_s", "p99_s"];
  const rows = [data.minutes, ...series.map((k) => data[k])];
  if (runtimeChart === null || runtimeTask !== task) {
    if (runtimeChart !== null) runtimeChart.destroy();
    runtimeChart = new uPlot({
      width: Math.max(320, box.clientWidth), height: 200,
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(0.001, max || 0)] } },
      series: [{}, ...series.map((k, i) => ({ label: k.replace("_s", ""), stroke: ["#1565c0", "#ef6c00", "#c62828"][i], width: 1.5, spanGaps: false }))],
      axes: [{}, { label: "seconds" }],
    }, rows, box);
  } else {
    runtimeChart.setData(rows);
  }
  runtimeTask = task;
}

function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : "?";
}

async function search(event) {
  if (event) event.preventDefault();
  const params = new URLSearchParams();
  for (const [key, value] of new FormData(document.getElementById("search"))) if (value.trim()) params.set(key, value.trim());
  let data;
  try {
    data = await api(`/api/tasks?${params}`);
  } catch (e) {
    notice(`search refused: ${e.message}`, true);
    return;
  }
  const shown = data.tasks.length < data.matched ? `, newest ${data.tasks.length} shown` : "";
  document.getElementById("search-summary").textContent =
    `${data.matched} task(s) of ${data.indexed} in the history${shown} (${data.took_ms} ms)`;
  document.getElementById("task-results").hidden = data.tasks.length === 0;
  fill(document.querySelector("#task-results tbody"), data.tasks.map((t) => el("tr", { "data-id": t.id },
    el("td", {}, when(t.last_ts)), el("td", {}, t.task),
    el("td", {}, el("a", { href: "#", class: "task-link", onclick: (e) => { e.preventDefault(); openTask(t.id); } }, t.id)),
    el("td", { class: t.state === "failed" || t.state === "dead-lettered" ? "bad" : "" }, t.state, " ", progressCell(t.progress)),
    el("td", {}, el("code", {}, t.args ?? "")), el("td", {}, t.worker ?? ""),
    el("td", { class: "n" }, t.runtime_s === null ? "-" : `${t.runtime_s.toFixed(3)} s`))));
}

async function openTask(id) {
  let t;
  try {
    t = await api(`/api/task/${encodeURIComponent(id)}`);
  } catch (e) {
    notice(`cannot show task ${id}: ${e.message}`, true);
    return;
  }
  document.getElementById("task-life").hidden = false;
  document.getElementById("task-title").textContent = `${t.task} ${t.id}`;
  const runtime = t.runtime_s === null ? "" : `, ran ${t.runtime_s.toFixed(3)} s`;
  const done = t.progress ? `; progress ${t.progress.done}/${t.progress.total} ${t.progress.note || ""}` : "";
  document.getElementById("task-summary").textContent =
    `${t.state}${runtime} on ${t.worker ?? "?"}; arguments ${t.args ?? "(not recorded)"}${done}`;
  renderTaskWorkflow(t);
  fill(document.getElementById("task-events"), t.events.map((e) => el("li", { "data-state": e.state },
    el("span", { class: "muted" }, when(e.ts)), " ", el("strong", {}, e.state),
    e.worker ? ` on ${e.worker}` : "", e.runtime_s !== undefined ? ` after ${e.runtime_s.toFixed(3)} s` : "",
    e.retry_in_s !== undefined ? `, retry in ${e.retry_in_s} s` : "",
    e.reason ? ` · ${e.reason}` : "", e.exc_type ? `: ${e.exc_type}: ${e.exc_message ?? ""}` : "",
    e.traceback ? traceback(`task:${t.id}:${e.ts}`, e.traceback) : "")));
}

document.getElementById("search").addEventListener("submit", search);
async function replayMatching() {
  const filter = {};
  const task = document.getElementById("dlq-filter-task").value.trim();
  const exc = document.getElementById("dlq-filter-exc").value.trim();
  if (task) filter.task = task;
  if (exc) filter.exc_type = exc;
  try {
    const result = await api(`/api/dlq/${encodeURIComponent(dlqQueue)}/replay`, { filter });
    notice(`replayed ${result.replayed.length} of ${result.matched} matching message(s) to ${dlqQueue}`, false);
  } catch (e) {
    notice(`replay refused: ${e.message}`, true);
  }
  await loadDlq();
  await refresh();
}

document.getElementById("dlq-replay-matching").addEventListener("click", replayMatching);
document.getElementById("dlq-refresh").addEventListener("click", loadDlq);
document.getElementById("dlq-replay-all").addEventListener("click", () => replay(null));
document.getElementById("dlq-purge").addEventListener("click", async () => {
  await loadDlq();  // ask with the count as it is now
  document.getElementById("dlq-confirm-text").textContent = `Delete all ${dlqTotal} message(s) of ${dlqName}? This cannot be undone.`;
  document.getElementById("dlq-confirm").hidden = false;
});
document.getElementById("dlq-purge-yes").addEventListener("click", purge);
document.getElementById("dlq-purge-no").addEventListener("click", () => { document.getElementById("dlq-confirm").hidden = true; });
window.addEventListener("resize", () => { if (chart) chart.setSize({ width: Math.max(320, document.getElementById("chart").clientWidth), height: 220 }); });

refresh();
setInterval(refresh, POLL_MS);
