// The live dashboard of `ahv serve`: sessions, participants with their
// rings and budgets, the audit log's status, and the live event stream.
// Everything it shows comes from the API with the tab's bearer token; every
// value is written with textContent (agent ids, paths and reasons come from
// untrusted agents and must never become markup).
"use strict";

const ALERTS = new Set([
  "ring.breach_detected",
  "security.agent_killed",
  "security.breaker_tripped",
  "liability.quarantine_entered",
  "liability.slash_executed",
  "saga.escalated",
]);
const MAX_EVENTS = 300;

let token = sessionStorage.getItem("ahv-token");
let rings = new Map();
let lastEventId = null;
let refreshTimer = null;
let eventCount = 0;

function $(id) { return document.getElementById(id); }

function setStatus(text, state) {
  const s = $("status");
  s.textContent = text;
  s.dataset.state = state;
}

async function api(path) {
  const res = await fetch(path, { headers: { Authorization: "Bearer " + token } });
  if (res.status === 401) {
    sessionStorage.removeItem("ahv-token");
    token = null;
    showLogin();
    throw new Error("the token was refused");
  }
  if (!res.ok) throw new Error(path + ": " + res.status);
  return res.json();
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "–" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function bytes(n) {
  if (n >= 1 << 30) return (n / (1 << 30)).toFixed(0) + " GiB";
  if (n >= 1 << 20) return (n / (1 << 20)).toFixed(0) + " MiB";
  return n + " B";
}

function renderSessions(sessions) {
  const tbody = $("sessions").tBodies[0];
  const rows = [];
  const people = [];
  for (const s of sessions) {
    const tr = document.createElement("tr");
    tr.dataset.session = s.id;
    cell(tr, s.id);
    cell(tr, s.state);
    cell(tr, s.creator);
    cell(tr, s.participants.length);
    cell(tr, Math.round(s.expires_at_ms / 1000));
    rows.push(tr);
    if (s.state !== "archived") {
      for (const p of s.participants) people.push([s.id, p]);
    }
  }
  tbody.replaceChildren(...rows);
  const pbody = $("participants").tBodies[0];
  pbody.replaceChildren(...people.map(([sid, p]) => {
    const tr = document.createElement("tr");
    tr.dataset.agent = p.agent;
    tr.dataset.session = sid;
    const limits = rings.get(p.ring) || {};
    cell(tr, p.agent);
    cell(tr, sid);
    cell(tr, p.ring, "ring");
    cell(tr, p.sigma.toFixed(2));
    cell(tr, p.effective === null ? null : p.effective.toFixed(2));
    cell(tr, limits.fuel_per_call);
    cell(tr, limits.memory_bytes === undefined ? null : bytes(limits.memory_bytes));
    cell(tr, limits.deadline_ms === undefined ? null : limits.deadline_ms / 1000 + " s");
    return tr;
  }));
}

function renderAudit(a) {
  const dl = $("audit");
  const items = [];
  const add = (k, v) => {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v === undefined || v === null ? "–" : String(v);
    items.push(dt, dd);
  };
  add("auditing", a.enabled ? "on" : "off");
  add("deltas captured", a.captured);
  add("backlog (bytes)", a.backlog_bytes);
  add("write failures", a.write_failures);
  add("last error", a.last_error);
  const c = a.last_commitment;
  add("last commitment", c ? "#" + c.index + " " + (c.session || "") + " (" + c.tree_size + " deltas)" : null);
  add("last commitment root", c ? c.root : null);
  add("signed head: commitments", a.signed_head ? a.signed_head.size : null);
  add("signed head: root", a.signed_head ? a.signed_head.root : null);
  add("public key", a.public_key);
  dl.replaceChildren(...items);
}

async function refresh() {
  refreshTimer = null;
  try {
    const [sessions, audit] = await Promise.all([api("/v1/sessions"), api("/v1/audit")]);
    renderSessions(sessions);
    renderAudit(audit);
  } catch (e) {
    setStatus(String(e.message || e), "error");
  }
}

function soon() {
  if (refreshTimer === null) refreshTimer = setTimeout(refresh, 150);
}

function showEvent(kind, data) {
  let e;
  try { e = JSON.parse(data); } catch { e = null; }
  const li = document.createElement("li");
  if (e && e.id !== undefined) li.value = e.id;
  if (ALERTS.has(kind)) li.className = "alert";
  if (kind === "lagged" || kind === "reset") li.className = "notice";
  li.dataset.kind = kind;
  const fields = e && e.fields ? Object.entries(e.fields).map(([k, v]) => k + "=" + JSON.stringify(v)).join(" ") : data;
  li.textContent = [kind, e && e.session, e && e.agent, fields].filter(Boolean).join("  ");
  const list = $("events");
  list.prepend(li);
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
  eventCount += 1;
  $("event-count").textContent = "(" + eventCount + ")";
}

// Server-Sent Events over fetch (EventSource cannot send a bearer token).
async function stream() {
  while (token) {
    try {
      const headers = { Authorization: "Bearer " + token };
      if (lastEventId !== null) headers["Last-Event-ID"] = String(lastEventId);
      const res = await fetch("/v1/events/stream", { headers });
      if (!res.ok) throw new Error("event stream: " + res.status);
      setStatus("live", "live");
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      let kind = "message", data = [], id = null;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).replace(/\r$/, "");
          buf = buf.slice(nl + 1);
          if (line === "") {
            if (data.length) {
              showEvent(kind, data.join("\n"));
              if (id !== null) lastEventId = id;
              if (kind !== "audit.delta_captured") soon();
            }
            kind = "message"; data = []; id = null;
          } else if (line.startsWith("event:")) {
            kind = line.slice(6).trim();
          } else if (line.startsWith("data:")) {
            data.push(line.slice(5).replace(/^ /, ""));
          } else if (line.startsWith("id:")) {
            id = Number(line.slice(3).trim());
          }
        }
      }
      setStatus("reconnecting…", "idle");
    } catch (e) {
      setStatus(String(e.message || e), "error");
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function start() {
  $("login").hidden = true;
  $("main").hidden = false;
  try {
    for (const r of await api("/v1/rings")) rings.set(r.ring, r);
  } catch (e) {
    setStatus(String(e.message || e), "error");
    return;
  }
  await refresh();
  // Start the stream with the last 200 events the history holds.
  try {
    const st = await api("/v1/events/stats");
    if (st.last_id) lastEventId = Math.max(0, st.last_id - 200);
  } catch (e) {
    setStatus(String(e.message || e), "error");
  }
  stream();
  setInterval(refresh, 5000);
}

function showLogin() {
  $("main").hidden = true;
  $("login").hidden = false;
}

document.addEventListener("DOMContentLoaded", () => {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    token = decodeURIComponent(m[1]);
    sessionStorage.setItem("ahv-token", token);
    history.replaceState(null, "", location.pathname);
  }
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem("ahv-token", token);
    start();
  });
  if (token) start(); else showLogin();
});
