"use strict";
// Fleet's dashboard: hash-routed pages (#/jobs?queue=..., #/job/<queue>/<id>, ...) over the
// admin API. The operator key stays in this tab's sessionStorage and travels only in the
// Authorization header; live data comes from /admin/v1/stream, read with fetch (EventSource
// cannot send the header), and each tick refreshes the page on show.
const $ = (id) => document.getElementById(id);
let key = sessionStorage.getItem("fleet-key") || "";
// A key may be handed over in the URL fragment (never sent to the server); it is moved
// to this tab's storage and removed from the address bar at once.
if (location.hash.startsWith("#key=")) {
  key = decodeURIComponent(location.hash.slice(5));
  sessionStorage.setItem("fleet-key", key);
  history.replaceState(null, "", location.pathname);
}
let samples = [];            // {at, queues: [[name, succeeded, lagMs, ready]]}
let last = null;             // previous live snapshot, for jobs/s
let live = null;             // latest live snapshot
let ticks = 0;
let connected = false;
let archive = null;          // null: not asked yet; true/false: the archive route answers
const STATES = ["ready", "scheduled", "running", "retrying", "dead", "succeeded", "cancelled", "expired"];

function api(path, opts = {}) {
  opts.headers = Object.assign({ "Authorization": "Bearer " + key }, opts.headers || {});
  return fetch(path, opts).then(async (r) => {
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      const e = new Error((body.error && body.error.message) || ("HTTP " + r.status));
      e.status = r.status;
      throw e;
    }
    return r;
  });
}
const getJson = async (path) => (await api(path)).json();
function send(method, path, body) {
  const opts = { method };
  if (body !== undefined) { opts.headers = { "Content-Type": "application/json" }; opts.body = JSON.stringify(body); }
  return api(path, opts).then((r) => r.json());
}
const enc = encodeURIComponent;
function text(v) { return v === undefined || v === null ? "" : String(v); }
function when(ms) {
  if (ms === undefined || ms === null || ms === "") return "";
  const d = typeof ms === "number" ? new Date(ms) : new Date(ms);
  return isNaN(d) ? text(ms) : d.toISOString().replace("T", " ").slice(0, 19);
}
// Builds an element; children are nodes or text (never parsed as HTML).
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") el.textContent = text(v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of kids.flat(Infinity)) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : text(c));
  return el;
}
function row(cells, attrs) {
  return h("tr", attrs, cells.map((c) => c instanceof Node && c.tagName === "TD" ? c : h("td", {}, c)));
}
function fill(tableId, rows) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren(...rows);
}
function link(href, label) { return h("a", { href }, label); }
function jobHref(queue, id) { return "#/job/" + enc(queue) + "/" + enc(id); }
// A button that asks once more before it acts (no blocking dialogs: they suit neither
// phones nor tests).
function confirmButton(label, cls, act) {
  const b = h("button", { class: cls, text: label });
  b.addEventListener("click", async () => {
    if (!b.dataset.armed) { b.dataset.armed = "1"; b.textContent = "Really " + label.toLowerCase() + "?"; return; }
    delete b.dataset.armed; b.disabled = true;
    try { b.textContent = await act(); } catch (e) { b.textContent = e.message; b.classList.add("error"); }
  });
  return b;
}

// ---- routing ----
function route() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query] = raw.split("?");
  const parts = path.split("/").filter((p) => p !== "").map(decodeURIComponent);
  return { page: parts[0] || "queues", parts: parts.slice(1), params: new URLSearchParams(query || "") };
}
function go(page, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  location.hash = "#/" + page + (s ? "?" + s : "");
}
const pages = {};
function show() {
  if (!connected) return;
  const r = route();
  const page = pages[r.page] ? r.page : "queues";
  document.querySelectorAll(".page").forEach((p) => { p.hidden = p.id !== "page-" + (page === "job" ? "job" : page); });
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("current", a.dataset.page === (page === "job" ? "jobs" : page)));
  document.body.dataset.page = page;
  pages[page].open(r);
}
window.addEventListener("hashchange", () => {
  // A new key handed over while the page is open: start again with it.
  if (location.hash.startsWith("#key=")) { location.reload(); return; }
  show();
});
function current() { return document.body.dataset.page; }

// ---- queues overview ----
function renderQueues(snapshot) {
  const rows = snapshot.queues.map((q) => {
    let rate = "";
    if (last) {
      const prev = last.queues.find((p) => p.queue === q.queue);
      const dt = (snapshot.at - last.at) / 1000;
      if (prev && dt > 0) rate = ((q.stats.succeeded - prev.stats.succeeded) / dt).toFixed(1);
    }
    const n = (state, v) => h("td", {}, link("#/jobs?queue=" + enc(q.queue) + "&state=" + state, text(v)));
    return h("tr", { "data-queue": q.queue },
      h("td", {}, link("#/jobs?queue=" + enc(q.queue), q.queue)),
      n("ready", q.stats.ready), n("scheduled", q.stats.scheduled), n("running", q.stats.running),
      n("retrying", q.stats.retrying), n("dead", q.stats.dead), n("succeeded", q.stats.succeeded),
      h("td", { text: rate }), h("td", { text: (q.lag_ms / 1000).toFixed(1) + " s" }),
      h("td", { text: q.workers }), h("td", { text: q.paused ? "yes" : "" }));
  });
  fill("queues", rows);
  last = snapshot;
}
function batchRow(b, extra) {
  const finished = b.succeeded + b.failed;
  const bar = h("progress", { max: b.total, value: finished, title: finished + " / " + b.total });
  return row([b.id, b.tenant, link("#/jobs?queue=" + enc(b.queue), b.queue), bar, b.succeeded, b.failed, b.total, ...(extra || [])]);
}
function renderBatches(batches) {
  fill("batches", (batches || []).map((b) => batchRow(b)));
  $("batches-box").hidden = !batches || batches.length === 0;
}
function drawChart(canvas, points, label) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, hh = canvas.height;
  ctx.clearRect(0, 0, w, hh);
  ctx.strokeStyle = "#ccd"; ctx.strokeRect(0.5, 0.5, w - 1, hh - 1);
  if (points.length < 2) { ctx.fillStyle = "#889"; ctx.fillText("collecting samples...", 10, 20); return; }
  const t0 = points[0][0], t1 = points[points.length - 1][0] || t0 + 1;
  const max = Math.max(1e-9, ...points.map((p) => p[1]));
  ctx.strokeStyle = "#3366cc"; ctx.lineWidth = 2; ctx.beginPath();
  points.forEach(([t, v], i) => {
    const x = 4 + (w - 8) * (t - t0) / Math.max(1, t1 - t0);
    const y = hh - 4 - (hh - 24) * v / max;
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
  ctx.fillStyle = "#445"; ctx.fillText(label + " max " + max.toFixed(2), 8, 14);
}
function drawCharts() {
  const tput = [], lag = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i];
    const dt = (b.at - a.at) / 1000;
    const sum = (s, idx) => s.queues.reduce((acc, q) => acc + q[idx], 0);
    if (dt > 0) tput.push([b.at, Math.max(0, (sum(b, 1) - sum(a, 1)) / dt)]);
    lag.push([b.at, Math.max(...b.queues.map((q) => q[2]), 0) / 1000]);
  }
  drawChart($("throughput"), tput, "jobs/s");
  drawChart($("lag"), lag, "s");
}
async function loadDead(queues) {
  const rows = [];
  for (const q of queues) {
    const groups = await getJson("/admin/v1/queues/" + enc(q.queue) + "/dead/groups");
    for (const g of groups) rows.push([q.queue, g]);
  }
  fill("dead", rows.map(([queue, g]) => {
    const b = h("button", { class: "replay", text: "Replay" });
    b.onclick = async () => {
      b.disabled = true;
      try {
        // Replays match the reason's text up to its first folded digit.
        const r = await send("POST", "/admin/v1/queues/" + enc(queue) + "/replay", { reason: g.reason.split("#")[0] });
        b.textContent = "replayed " + r.replayed;
      } catch (e) { b.textContent = e.message; }
    };
    return row([link("#/jobs?queue=" + enc(queue) + "&state=dead", queue), g.count, h("td", { class: "reason", text: g.reason }), b]);
  }));
  $("dead-box").hidden = rows.length === 0;
}
pages.queues = {
  open() { if (live) { renderQueues(live); renderBatches(live.batches); } drawCharts(); if (live) loadDead(live.queues).catch(() => {}); },
  tick(snap, n) { renderQueues(snap); renderBatches(snap.batches); drawCharts(); if (n % 10 === 1) loadDead(snap.queues).catch(() => {}); },
};

// ---- job browser ----
function queueNames() { return live ? live.queues.map((q) => q.queue) : []; }
function setOptions(select, values, chosen) {
  const have = Array.from(select.options).map((o) => o.value).join("\n");
  if (have !== values.join("\n")) select.replaceChildren(...values.map((v) => h("option", { value: v, text: v })));
  if (chosen !== undefined && values.includes(chosen)) select.value = chosen;
}
function localInput(iso) {
  if (!iso) return "";
  const d = new Date(/^\d+$/.test(iso) ? Number(iso) : iso);
  if (isNaN(d)) return "";
  return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}
function isoOf(local) { return local ? new Date(local).toISOString() : ""; }
async function archiveAnswers() {
  if (archive !== null) return archive;
  // Any answer but 404 means the route exists (a 422 for a missing filter included); a
  // network failure leaves the question open for the next page.
  try { await api("/admin/v1/archive/jobs?limit=1"); archive = true; }
  catch (e) { archive = e.status === 404 ? false : (e.status ? true : null); }
  return archive === true;
}
let jobsParams = null;
async function loadJobs(quiet) {
  const p = jobsParams;
  const src = p.get("source") === "archive" ? "archive" : "live";
  const q = new URLSearchParams();
  for (const k of ["queue", "state", "kind", "tenant", "q", "from", "to", "cursor"]) if (p.get(k)) q.set(k, p.get(k));
  q.set("limit", p.get("limit") || "50");
  const path = (src === "archive" ? "/admin/v1/archive/jobs?" : "/admin/v1/jobs?") + q.toString();
  try {
    const page = await getJson(path);
    if (jobsParams !== p) return;
    const jobs = page.jobs || page.items || [];
    fill("jobs", jobs.map((j) => row([
      link(jobHref(j.queue || p.get("queue"), j.id), j.id), j.kind, j.tenant || "", j.state, j.attempts,
      when(j.enqueued_at), when(j.at || j.finished_at), h("td", { class: "reason", text: j.error || "" }),
    ], { "data-id": j.id })));
    $("jobs-error").textContent = jobs.length === 0 ? "no job matches" + (page.next ? " in the part read so far" : "") : "";
    const next = $("jobs-next");
    next.hidden = !page.next;
    if (page.next) { const n = new URLSearchParams(p); n.set("cursor", page.next); next.href = "#/jobs?" + n.toString(); }
    const first = new URLSearchParams(p); first.delete("cursor");
    $("jobs-first").href = "#/jobs?" + first.toString();
    $("jobs-first").hidden = !p.get("cursor");
    $("jobs-scanned").textContent = page.scanned !== undefined ? "(" + page.scanned + " entries read)" : "";
  } catch (e) { if (!quiet) { fill("jobs", []); $("jobs-error").textContent = e.message; } }
}
pages.jobs = {
  open(r) {
    const p = r.params;
    const queues = queueNames();
    if (!p.get("queue") && queues.length) { p.set("queue", queues[0]); history.replaceState(null, "", "#/jobs?" + p.toString()); }
    if (!p.get("state")) p.set("state", "ready");
    jobsParams = p;
    setOptions($("f-queue"), queues.includes(p.get("queue")) || !p.get("queue") ? queues : queues.concat([p.get("queue")]), p.get("queue"));
    setOptions($("f-state"), STATES, p.get("state"));
    $("f-kind").value = p.get("kind") || "";
    $("f-tenant").value = p.get("tenant") || "";
    $("f-q").value = p.get("q") || "";
    $("f-from").value = localInput(p.get("from"));
    $("f-to").value = localInput(p.get("to"));
    const src = p.get("source") === "archive" ? "archive" : "live";
    const tab = (name) => { const n = new URLSearchParams(p); n.delete("cursor"); if (name === "live") n.delete("source"); else n.set("source", name); return "#/jobs?" + n.toString(); };
    $("tab-live").href = tab("live"); $("tab-archive").href = tab("archive");
    $("tab-live").classList.toggle("current", src === "live"); $("tab-archive").classList.toggle("current", src === "archive");
    $("jobs-source-note").textContent = src === "archive" ? "(finished jobs kept in PostgreSQL)" : "(live, in Redis)";
    archiveAnswers().then((ok) => { $("tab-archive").hidden = !ok; });
    loadJobs(false);
  },
  tick(snap, n) { if (n % 5 === 0) loadJobs(true); },
};
$("jobs-filter").onsubmit = (ev) => {
  ev.preventDefault();
  go("jobs", {
    source: jobsParams && jobsParams.get("source"), queue: $("f-queue").value, state: $("f-state").value,
    kind: $("f-kind").value.trim(), tenant: $("f-tenant").value.trim(), q: $("f-q").value.trim(),
    from: isoOf($("f-from").value), to: isoOf($("f-to").value),
  });
};

// ---- one job ----
let jobRef = null;
function jobPath() { return "/admin/v1/queues/" + enc(jobRef.queue) + "/jobs/" + enc(jobRef.id); }
async function loadJob(first) {
  const ref = jobRef;
  let job;
  try { job = await getJson(jobPath()); }
  catch (e) {
    if (jobRef !== ref) return;
    // A job that left Redis after its retention is read from the archive, if it answers.
    if (e.status === 404 && await archiveAnswers()) {
      try {
        const a = await getJson("/admin/v1/archive/jobs/" + enc(ref.queue) + "/" + enc(ref.id));
        if (jobRef === ref) showArchived(a);
        return;
      } catch (e2) { if (jobRef !== ref) return; }
    }
    $("job-error").textContent = e.status === 404
      ? "not in Redis (finished jobs leave it after their retention" + (archive ? "; not in the archive either" : "") + ")"
      : e.message;
    $("job-state").textContent = e.status === 404 ? "gone" : "";
    $("job-actions").hidden = true;
    return;
  }
  if (jobRef !== ref) return;
  $("job-error").textContent = job.envelope_error ? "envelope does not decode: " + job.envelope_error : "";
  const env = job.envelope || {};
  $("job-state").textContent = job.state; $("job-state").className = "badge " + job.state;
  const kv = [["queue", link("#/jobs?queue=" + enc(ref.queue) + "&state=" + job.state, ref.queue)], ["kind", env.kind], ["tenant", env.tenant],
    ["state", job.state], ["attempts", job.attempts + " of " + text(env.max_attempts)], ["priority", env.priority],
    ["enqueued", when(env.enqueued_at)], ["run at", when(env.run_at)], ["timeout", env.timeout_ms ? env.timeout_ms + " ms" : ""],
    ["deadline", when(env.deadline)], ["batch", env.batch], ["trace", env.trace]];
  fill("job-envelope", kv.filter(([, v]) => v !== undefined && v !== null && v !== "").map(([k, v]) => row([k, v])));
  const args = job.envelope ? JSON.stringify(env.args, null, 2) : job.raw_envelope;
  $("job-args").textContent = args;
  if (first || !$("replay-box").open) $("replay-args").value = job.envelope ? JSON.stringify(env.args, null, 2) : "";
  const p = job.progress;
  $("job-progress").hidden = false;
  if (p) {
    const frac = p.percent !== undefined && p.percent !== null ? p.percent / 100 : (p.total ? p.done / p.total : 0);
    $("job-progress-bar").value = Math.max(0, Math.min(1, frac));
    $("job-progress-text").textContent = (p.total ? p.done + " / " + p.total : (p.percent !== undefined && p.percent !== null ? p.percent.toFixed(0) + "%" : "")) + (p.message ? " " + p.message : "");
  } else { $("job-progress-bar").value = 0; $("job-progress-text").textContent = "none reported"; }
  $("job-result").textContent = job.result !== undefined && job.result !== null ? JSON.stringify(job.result, null, 2) : "none";
  const lastErr = (job.history || []).length ? job.history[job.history.length - 1].error : (job.history_error || "");
  $("job-last-error").textContent = lastErr || "none";
  fill("job-history", (job.history || []).slice().reverse().map((a) => row([a.attempt, when(a.started_at), when(a.at),
    a.duration_ms !== undefined ? a.duration_ms : "", a.worker || "", h("td", { class: "reason", text: a.error })])));
  const s = job.state;
  $("job-actions").hidden = false;
  $("act-retry").hidden = !["scheduled", "retrying", "dead"].includes(s);
  $("act-cancel").hidden = !["ready", "scheduled", "retrying", "running"].includes(s);
  $("act-delete").hidden = !["dead", "succeeded", "cancelled", "expired"].includes(s);
  $("replay-box").hidden = !job.envelope;
}
// A finished job read from the archive (PostgreSQL): shown as it ended, without actions
// (they act on jobs in Redis).
function showArchived(a) {
  $("job-error").textContent = "from the archive: finished " + when(a.finished_at) + ", no longer in Redis";
  $("job-state").textContent = a.state; $("job-state").className = "badge " + a.state;
  const kv = [["queue", link("#/jobs?queue=" + enc(a.queue) + "&state=" + a.state + "&source=archive", a.queue)], ["kind", a.kind],
    ["tenant", a.tenant], ["state", a.state], ["attempts", a.attempt], ["enqueued", when(a.enqueued_at)],
    ["started", when(a.started_at)], ["finished", when(a.finished_at)], ["batch", a.batch]];
  fill("job-envelope", kv.filter(([, v]) => v !== undefined && v !== null && v !== "").map(([k, v]) => row([k, v])));
  $("job-args").textContent = JSON.stringify(a.args, null, 2);
  const p = a.progress;
  $("job-progress").hidden = false;
  $("job-progress-bar").value = p && p.percent !== undefined && p.percent !== null ? Math.max(0, Math.min(1, p.percent / 100)) : 0;
  $("job-progress-text").textContent = p ? ((p.percent !== undefined && p.percent !== null ? p.percent.toFixed(0) + "%" : "") + (p.message ? " " + p.message : "")) : "none reported";
  $("job-result").textContent = a.result !== undefined && a.result !== null ? JSON.stringify(a.result, null, 2) : "none";
  $("job-last-error").textContent = a.error || "none";
  const hist = Array.isArray(a.history) ? a.history : [];
  fill("job-history", hist.slice().reverse().map((x) => row([x.attempt, when(x.started_at), when(x.at),
    x.duration_ms !== undefined ? x.duration_ms : "", x.worker || "", h("td", { class: "reason", text: x.error })])));
  $("job-actions").hidden = true;
  $("replay-box").hidden = true;
}
async function jobAction(button, method, suffix, okText) {
  const out = $("act-result");
  button.disabled = true;
  try {
    await send(method, jobPath() + suffix);
    out.className = "ok"; out.textContent = okText;
    await loadJob(false);
  } catch (e) { out.className = "error"; out.textContent = e.message; }
  button.disabled = false;
}
$("act-retry").onclick = () => jobAction($("act-retry"), "POST", "/retry", "retried: it runs as soon as a worker is free");
$("act-cancel").onclick = () => jobAction($("act-cancel"), "POST", "/cancel", "cancelled");
$("act-delete").onclick = () => {
  const b = $("act-delete");
  if (!b.dataset.armed) { b.dataset.armed = "1"; b.textContent = "Really delete?"; return; }
  delete b.dataset.armed; b.textContent = "Delete";
  jobAction(b, "DELETE", "", "deleted");
};
$("act-replay").onclick = async () => {
  const out = $("replay-result");
  let args;
  try { args = JSON.parse($("replay-args").value); } catch (e) { out.className = "error"; out.textContent = "the arguments are not JSON: " + e.message; return; }
  try {
    const r = await send("POST", jobPath() + "/replay", { args });
    out.className = "ok"; out.replaceChildren("enqueued as ", link(jobHref(jobRef.queue, r.job), r.job));
  } catch (e) { out.className = "error"; out.textContent = e.message; }
};
pages.job = {
  open(r) {
    jobRef = { queue: r.parts[0] || "", id: r.parts.slice(1).join("/") };
    $("job-id").textContent = jobRef.id;
    for (const id of ["act-result", "replay-result", "job-error"]) $(id).textContent = "";
    $("replay-box").open = false;
    $("act-delete").textContent = "Delete"; delete $("act-delete").dataset.armed;
    archiveAnswers();
    loadJob(true);
  },
  tick(snap, n) { if (n % 2 === 0) loadJob(false); },
};

// ---- schedules ----
let schedEditing = null;     // null: creating; else the name edited
async function loadSchedules() {
  try {
    const list = await getJson("/admin/v1/schedules?limit=500");
    fill("schedules", list.map((s) => {
      const path = "/admin/v1/schedules/" + enc(s.name);
      const act = (label, suffix, done, reload) => h("button", { class: "small sched-" + suffix, text: label, onclick: async (ev) => {
        const b = ev.target; b.disabled = true;
        try { await send("POST", path + "/" + suffix); b.textContent = done; if (reload) loadSchedules(); } catch (e) { b.textContent = e.message; }
      } });
      const buttons = h("td", { class: "text" },
        s.paused ? act("Resume", "resume", "resumed", true) : act("Pause", "pause", "paused", true),
        act("Run now", "run", "enqueued", false),
        h("button", { class: "small sched-edit", text: "Edit", onclick: () => editSchedule(s.name) }),
        confirmButton("Delete", "small sched-delete", async () => { await send("DELETE", path); loadSchedules(); return "deleted"; }));
      return row([s.name, when(s.next_fire_at), when(s.last_fired_at), s.missed_ticks, s.paused ? "yes" : "",
        h("td", { class: "reason", text: s.last_error || "" }), buttons], { "data-schedule": s.name });
    }));
    $("sched-error").textContent = list.length ? "" : "no schedules yet";
  } catch (e) { $("sched-error").textContent = e.message; }
}
async function editSchedule(name) {
  $("sched-editor").hidden = false; $("sched-form-result").textContent = "";
  if (name === null) {
    schedEditing = null;
    $("sched-editor-title").textContent = "New schedule";
    $("sched-name").disabled = false; $("sched-name").value = "";
    $("sched-def").value = JSON.stringify({ cron: "0 */5 * * * *", timezone: "UTC", kind: "", args: {}, missed: "skip" }, null, 2);
    return;
  }
  try {
    const def = await getJson("/admin/v1/schedules/" + enc(name));
    schedEditing = name;
    $("sched-editor-title").textContent = "Edit " + name + (def.owner === "config" ? " (from the config file: edit it there)" : "");
    $("sched-name").value = name; $("sched-name").disabled = true;
    const body = Object.assign({}, def); delete body.owner; delete body.name;
    $("sched-def").value = JSON.stringify(body, null, 2);
  } catch (e) { $("sched-form-result").textContent = e.message; }
}
$("sched-new").onclick = () => editSchedule(null);
$("sched-close").onclick = () => { $("sched-editor").hidden = true; };
$("sched-form").onsubmit = async (ev) => {
  ev.preventDefault();
  const out = $("sched-form-result");
  let body;
  try { body = JSON.parse($("sched-def").value); } catch (e) { out.className = "error"; out.textContent = "not JSON: " + e.message; return; }
  const name = schedEditing === null ? $("sched-name").value.trim() : schedEditing;
  try {
    await send(schedEditing === null ? "POST" : "PUT", "/admin/v1/schedules/" + enc(name), body);
    out.className = "ok"; out.textContent = "saved";
    schedEditing = name; $("sched-name").disabled = true;
    loadSchedules();
  } catch (e) { out.className = "error"; out.textContent = e.message; }
};
pages.schedules = { open() { loadSchedules(); }, tick(snap, n) { if (n % 5 === 0) loadSchedules(); } };

// ---- batches ----
async function loadBatches() {
  try {
    const list = await getJson("/admin/v1/batches?limit=100");
    fill("batch-list", list.map((b) => batchRow(b, [when(b.created_at), b.done ? "yes" : ""])));
    $("batch-error").textContent = list.length ? "" : "no batches";
  } catch (e) { $("batch-error").textContent = e.message; }
}
pages.batches = { open() { loadBatches(); }, tick(snap, n) { if (n % 2 === 0) loadBatches(); } };

// ---- workers ----
async function loadWorkers() {
  try {
    const rows = [];
    for (const q of queueNames()) {
      for (const w of await getJson("/admin/v1/queues/" + enc(q) + "/workers")) {
        const jobs = h("td", { class: "text" }, w.jobs.map((id) => [link(jobHref(q, id), id), " "]));
        rows.push(row([w.instance, q, when(w.last_seen), w.running, jobs], { "data-instance": w.instance }));
      }
    }
    fill("workers", rows);
    $("workers-error").textContent = rows.length ? "" : "no live workers";
  } catch (e) { $("workers-error").textContent = e.message; }
}
pages.workers = { open() { loadWorkers(); }, tick(snap, n) { if (n % 2 === 0) loadWorkers(); } };

// ---- limits ----
async function loadLimits() {
  try {
    const list = await getJson("/admin/v1/limits");
    fill("limits", list.map((l) => {
      const o = l.overrides;
      const desc = o ? [o.rate !== null && o.rate !== undefined ? o.rate + "/s" : "", "burst " + o.burst,
        o.concurrency ? "concurrency " + o.concurrency : "", o.breaker_failures ? "breaker " + o.breaker_failures + " / " + o.breaker_cooldown_ms + " ms" : ""]
        .filter(Boolean).join(", ") : "";
      const edit = h("button", { class: "small limit-edit", text: "Edit", onclick: () => {
        $("l-key").value = l.key;
        $("l-rate").value = o && o.rate ? o.rate : ""; $("l-burst").value = o ? o.burst : "";
        $("l-conc").value = o && o.concurrency ? o.concurrency : ""; $("l-fail").value = o && o.breaker_failures ? o.breaker_failures : "";
        $("l-cool").value = o && o.breaker_failures ? o.breaker_cooldown_ms : "";
        $("l-key").scrollIntoView();
      } });
      return row([l.key, l.breaker, l.failures, l.tokens === null ? "" : l.tokens, l.in_flight, when(l.slowed_until),
        h("td", { class: "text", text: desc }), edit], { "data-key": l.key });
    }));
    $("limits-error").textContent = list.length ? "" : "no limit key has state yet";
  } catch (e) { $("limits-error").textContent = e.message; }
}
$("limit-form").onsubmit = async (ev) => {
  ev.preventDefault();
  const out = $("limit-result");
  const num = (id) => { const v = $(id).value.trim(); return v === "" ? null : Number(v); };
  const spec = { rate: num("l-rate"), burst: num("l-burst") || 1, concurrency: num("l-conc"), breaker_failures: num("l-fail"),
    breaker_cooldown_ms: num("l-cool") || 0 };
  try {
    await send("PUT", "/admin/v1/limits/" + enc($("l-key").value.trim()), spec);
    out.className = "ok"; out.textContent = "saved";
    loadLimits();
  } catch (e) { out.className = "error"; out.textContent = e.message; }
};
pages.limits = { open() { loadLimits(); }, tick(snap, n) { if (n % 2 === 0) loadLimits(); } };

// ---- tenants ----
async function loadTenants() {
  const q = $("t-queue").value;
  if (!q) { $("tenants-error").textContent = "no queue yet"; return; }
  try {
    const list = await getJson("/admin/v1/queues/" + enc(q) + "/tenants");
    fill("tenants", list.map((t) => {
      const bar = t.quota ? h("progress", { max: t.quota, value: Math.min(t.open, t.quota), title: t.open + " / " + t.quota }) : "no quota";
      return row([t.tenant, t.running, t.concurrency || "none", t.open, t.quota || "none", bar, t.own_limits ? "yes" : ""], { "data-tenant": t.tenant });
    }));
    $("tenants-error").textContent = list.length ? "" : "no tenant has unfinished jobs on " + q;
  } catch (e) { $("tenants-error").textContent = e.message; }
}
$("t-queue").onchange = () => go("tenants", { queue: $("t-queue").value });
pages.tenants = {
  open(r) { setOptions($("t-queue"), queueNames(), r.params.get("queue") || undefined); loadTenants(); },
  tick(snap, n) { if (n % 2 === 0) loadTenants(); },
};

// ---- audit ----
let auditParams = null;
async function loadAudit() {
  const p = auditParams;
  const q = new URLSearchParams({ limit: "50" });
  if (p.get("action")) q.set("action", p.get("action"));
  if (p.get("before")) q.set("before", p.get("before"));
  try {
    const page = await getJson("/admin/v1/audit?" + q.toString());
    fill("audit", page.entries.map((e) => row([when(e.at), e.actor, e.action, h("td", { class: "text", text: e.target }), e.affected,
      h("td", { class: "args", text: JSON.stringify(e.params), title: JSON.stringify(e.params) })], { "data-action": e.action })));
    $("audit-error").textContent = page.entries.length ? "" : "no entries";
    const n = new URLSearchParams(p); if (page.next) n.set("before", page.next);
    $("audit-next").hidden = !page.next; $("audit-next").href = "#/audit?" + n.toString();
    const f = new URLSearchParams(p); f.delete("before");
    $("audit-first").hidden = !p.get("before"); $("audit-first").href = "#/audit?" + f.toString();
  } catch (e) { $("audit-error").textContent = e.message; }
}
$("audit-form").onsubmit = (ev) => { ev.preventDefault(); go("audit", { action: $("a-action").value.trim() }); };
pages.audit = {
  open(r) { auditParams = r.params; $("a-action").value = r.params.get("action") || ""; loadAudit(); },
  tick(snap, n) { if (n % 5 === 0 && !auditParams.get("before")) loadAudit(); },
};

// ---- the live stream ----
async function streamQueues() {
  const r = await api("/admin/v1/stream");
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  $("status").textContent = "live";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("");
      if (!data) continue;
      const snap = JSON.parse(data);
      if (snap.error) { $("status").textContent = snap.error; continue; }
      const first = live === null;
      live = snap;
      samples.push({ at: snap.at, queues: snap.queues.map((q) => [q.queue, q.stats.succeeded, q.lag_ms, q.stats.ready]) });
      samples = samples.filter((s) => s.at > snap.at - 3600 * 1000);
      ticks++;
      $("status").textContent = "live " + when(snap.at) + " UTC";
      if (first) { show(); continue; }
      const page = pages[current()];
      if (page && page.tick) page.tick(snap, ticks);
    }
  }
  $("status").textContent = "disconnected; reload to reconnect";
}

async function open() {
  try {
    samples = await getJson("/admin/v1/history");
    connected = true;
    $("login").hidden = true;
    $("queues-box").hidden = false;
    $("nav").hidden = false;
    await streamQueues();
  } catch (e) {
    connected = false;
    document.querySelectorAll(".page").forEach((p) => { p.hidden = true; });
    $("nav").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = e.message;
    $("status").textContent = "not connected";
  }
}

$("key-form").onsubmit = (ev) => {
  ev.preventDefault();
  key = $("key").value.trim();
  sessionStorage.setItem("fleet-key", key);
  open();
};
if (key) open();
