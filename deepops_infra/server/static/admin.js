"use strict";
// The it-admin's pages: the pool's free GPUs, users and their tokens, the audit log, team policies.
// Uses app.js's helpers (call, el, say, $, me); every change goes through the API and is audited there.

const ROLES = ["member", "team-admin", "it-admin", "finance"];
const when = (iso) => (iso ? iso.slice(0, 16).replace("T", " ") + "Z" : "never");  // to the minute, UTC
const cell = (text, cls) => el("td", cls ? { class: cls } : {}, text === null || text === undefined ? "-" : text);

async function loadAdmin() {
  await Promise.all([loadPool(), loadUsers(), loadTokens(), loadAudit(), loadPolicies()]);
}

async function loadPool() {
  let pool;
  try { pool = await call("GET", "/pool/gpus"); } catch (e) { say(e.message, true); return; }
  $("a-pool").tBodies[0].replaceChildren(...pool.hosts.map((h) => el("tr", { "data-host": h.name },
    cell(h.name), cell(h.connection + (h.address ? " " + h.address : "")),
    cell(h.total, "n"), cell(h.free, "n"), cell(h.total - h.free, "n"),
    cell(Object.entries(h.free_by_model).map(([m, n]) => `${n} × ${m}`).join(", ") || "none free"), cell(h.source))));
  const clusters = pool.clusters || [];  // Slurm clusters, when the server has any
  $("a-clusters-box").hidden = clusters.length === 0;
  $("a-clusters").tBodies[0].replaceChildren(...clusters.map((c) => el("tr", { "data-cluster": c.name },
    cell(c.name), cell(c.partition || "-"), cell(c.total, "n"), cell(c.free, "n"),
    cell(Object.entries(c.free_by_model || {}).map(([m, n]) => `${n} × ${m}`).join(", ") || "none free"))));
  const free = pool.hosts.reduce((a, h) => a + h.free, 0) + clusters.reduce((a, c) => a + (c.free || 0), 0);
  const total = pool.hosts.reduce((a, h) => a + h.total, 0) + clusters.reduce((a, c) => a + (c.total || 0), 0);
  $("a-pool-title").textContent = `Pool: ${free} of ${total} GPUs free`;
}

async function loadUsers() {
  let users;
  try { users = await call("GET", "/users"); } catch (e) { say(e.message, true); return; }
  $("a-users").tBodies[0].replaceChildren(...users.map((u) => {
    const role = el("select", { "aria-label": `role of ${u.name}` }, ...ROLES.map((r) => {
      const o = el("option", { value: r }, r); if (r === u.role) o.selected = true; return o;
    }));
    role.addEventListener("change", () => setRole(u.name, u.role, role));
    const toggle = el("button", { class: "secondary", onclick: () => setDisabled(u.name, !u.disabled) }, u.disabled ? "Enable" : "Disable");
    return el("tr", { "data-user": u.name, class: u.disabled ? "disabled" : "" },
      cell(u.name), cell(u.team), el("td", {}, role), cell(u.disabled ? "disabled" : "active"),
      cell(u.active_tokens, "n"), cell(when(u.last_used_at)), el("td", {}, u.name === me.user ? "" : toggle));
  }));
}

async function setRole(name, before, select) {
  if (!confirm(`Make ${name} a ${select.value} (now ${before})? Every token of ${name} carries the new role at once.`)) {
    select.value = before; return;
  }
  try { const u = await call("PUT", `/users/${encodeURIComponent(name)}/role`, { role: select.value }); say(`${name}: ${u.change}`); }
  catch (e) { say(e.message, true); }
  loadUsers(); loadTokens(); loadAudit();
}

async function setDisabled(name, disabled) {
  if (disabled && !confirm(`Disable ${name}? All their tokens are refused at once (their machines keep running).`)) return;
  try { const u = await call("POST", `/users/${encodeURIComponent(name)}/${disabled ? "disable" : "enable"}`); say(`${name}: ${u.change}`); }
  catch (e) { say(e.message, true); }
  loadUsers(); loadTokens(); loadAudit();
}

async function loadTokens() {
  let tokens;
  try { tokens = await call("GET", "/tokens"); } catch (e) { say(e.message, true); return; }
  $("a-tokens").tBodies[0].replaceChildren(...tokens.map((t) => el("tr", { "data-token": t.id, class: "state-" + t.state },
    cell(t.id), cell(t.user), cell(t.role), cell(t.team), cell(t.label || ""), cell(when(t.expires_at)), cell(when(t.last_used_at)),
    cell(t.state), el("td", {}, t.state === "active" || t.state === "disabled"
      ? el("button", { class: "secondary", onclick: () => revokeToken(t) }, "Revoke") : ""))));
}

async function revokeToken(t) {
  if (!confirm(`Revoke ${t.id} of ${t.user}${t.label ? ` (${t.label})` : ""}? It is refused from now on.`)) return;
  try { await call("DELETE", `/tokens/${t.id}`); say(`revoked ${t.id}`); } catch (e) { say(e.message, true); }
  loadTokens(); loadAudit();
}

async function loadAudit() {
  const params = new URLSearchParams({ limit: "200" });
  for (const [key, id] of [["user", "a-audit-user"], ["action", "a-audit-action"], ["since", "a-audit-since"]]) {
    if ($(id).value.trim()) params.set(key, $(id).value.trim());
  }
  let rows;
  try { rows = await call("GET", "/audit?" + params); } catch (e) { say(e.message, true); return; }
  $("a-audit").tBodies[0].replaceChildren(...rows.map((a) => el("tr", { class: "outcome-" + a.outcome },
    cell(when(a.at)), cell(a.actor), cell(a.action), cell(a.target), cell(`${a.status} ${a.outcome}`), cell(a.client), cell(a.detail || ""))));
  $("a-audit-none").hidden = rows.length > 0;
}

async function loadPolicies() {
  let p;
  try { p = await call("GET", "/policy/teams"); } catch (e) { say(e.message, true); return; }
  const row = (team, source, r) => el("tr", { "data-team": team }, cell(team), cell(r.targets.join(", ")), cell(r.gpu_models.join(", ")),
    cell(r.max_gpus_running, "n"), cell(r.max_ttl), cell(r.default_ttl), cell(r.max_idle_timeout), cell(source));
  $("a-policies").tBodies[0].replaceChildren(row("(default)", p.default.source, p.default.policy),
    ...p.teams.map((t) => row(t.team, t.source, t.policy)));
}

document.addEventListener("DOMContentLoaded", () => {
  $("a-audit-form").addEventListener("submit", (ev) => { ev.preventDefault(); loadAudit(); });
});
