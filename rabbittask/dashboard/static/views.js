// rabbittask dashboard, the control-plane views: active tasks (with revoke), rate limits, delayed retries,
// periodic schedules, and a task's workflow. Uses el, api, fill, notice, when, age from dashboard.js.
"use strict";

const CONTROL_POLL_MS = 2000;
let controlBusy = false;

function taskLink(id) {
  return el("a", { href: "#", class: "task-link", onclick: (e) => { e.preventDefault(); openTask(id); } }, id);
}

async function refreshControl() {
  if (controlBusy) return;  // an answer takes up to the inspect timeout: never two at once
  controlBusy = true;
  try {
    const [active, rates] = await Promise.all([api("/api/active"), api("/api/rate-limits")]);
    renderActive(active);
    renderRateLimits(rates);
  } catch (e) {
    document.getElementById("active-note").textContent = `cannot ask the workers: ${e.message}`;
  } finally {
    controlBusy = false;
  }
}

function renderActive(data) {
  fill(document.querySelector("#active tbody"), data.active.map((r) => el("tr", { "data-id": r.id },
    el("td", {}, r.name), el("td", {}, taskLink(r.id)), el("td", {}, el("code", {}, r.args ?? "")),
    el("td", {}, r.child), el("td", { class: "muted" }, when(r.started_at)),
    el("td", { class: "n" }, `${r.runtime_s.toFixed(1)} s`),
    el("td", {},
      el("button", { type: "button", class: "revoke", onclick: () => revoke(r.id, false) }, "Revoke"), " ",
      el("button", { type: "button", class: "terminate danger", onclick: () => revoke(r.id, true) }, "Revoke and terminate")))));
  document.getElementById("no-active").hidden = data.active.length > 0;
  const missing = data.missing.length ? `; silent (missing): ${data.missing.join(", ")}` : "";
  document.getElementById("active-note").textContent = `${data.children.length} worker child(ren) answered${missing}`;
}

async function revoke(id, terminate) {
  try {
    await api("/api/revoke", { ids: [id], terminate });
    notice(terminate ? `revoked and terminating ${id}` : `revoked ${id}: it will not run again`, false);
  } catch (e) {
    notice(`revoke refused: ${e.message}`, true);
  }
  await refreshControl();
}

function renderRateLimits(data) {
  fill(document.querySelector("#rate-limits tbody"), data.tasks.map((r) => el("tr", { "data-task": r.task },
    el("td", {}, r.task), el("td", {}, r.declared ?? "none"),
    el("td", { class: r.override ? "bad" : "" }, r.in_force ?? "no worker answered", r.override ? " (override)" : ""),
    el("td", { class: "n", title: `counted from ${r.counted} events` }, `${r.measured_per_s.toFixed(2)}/s`))));
}

function renderViews(state) {
  document.getElementById("ladder-total").textContent = num(state.delayed);
  const rows = state.delayed_tasks || [];
  fill(document.querySelector("#delayed-tasks tbody"), rows.map((r) => el("tr", { "data-id": r.id },
    el("td", {}, when(r.due)), el("td", { class: "n" }, r.due_in_s >= 0 ? `${age(r.due_in_s)}` : "due"),
    el("td", {}, r.task), el("td", {}, taskLink(r.id)),
    el("td", {}, r.exc_type ? `${r.exc_type}: ${r.exc_message ?? ""}` : (r.reason ?? "")),
    el("td", {}, el("code", {}, r.args ?? "")))));
  document.getElementById("no-delayed").hidden = rows.length > 0;
  const schedules = state.schedules || [];
  fill(document.querySelector("#schedules tbody"), schedules.map((s) => el("tr", { "data-schedule": s.name },
    el("td", {}, s.name), el("td", {}, s.task), el("td", {}, s.when),
    el("td", { class: "last-tick" }, s.last_tick ? when(s.last_tick) : "none seen"),
    el("td", { class: "next-tick" }, when(s.next_tick)))));
  document.getElementById("schedules-section").hidden = schedules.length === 0;
}

function renderTaskWorkflow(t) {
  const box = document.getElementById("task-workflow");
  const w = t.workflow_tasks;
  box.hidden = !w;
  if (!w) return;
  const states = Object.entries(w.states).sort().map(([s, n]) => `${n} ${s}`).join(", ");
  box.replaceChildren("workflow ", el("code", { class: "workflow-id" }, w.id),
    `: ${w.seen} task(s) of it in the history (${states})`);
}

refreshControl();
setInterval(refreshControl, CONTROL_POLL_MS);
