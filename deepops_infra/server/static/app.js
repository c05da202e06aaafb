"use strict";
// The deepops web page: machines for data scientists, costs for finance. No external assets.
const API = "/api/v1";
const PALETTE = ["#2f6fde", "#e8772e", "#2aa876", "#c2417e", "#8a5cd6", "#b8a22e", "#2ba6c4", "#d94a4a"];
const TTLS = [["30m", 1800], ["1h", 3600], ["2h", 7200], ["4h", 14400], ["8h", 28800], ["1d", 86400], ["2d", 172800], ["7d", 604800]];
const $ = (id) => document.getElementById(id);
let me = null, policy = null, timer = null;

function token() { return sessionStorage.getItem("deepops-token"); }

async function call(method, path, body) {
  const init = { method, headers: { Authorization: "Bearer " + token(), Accept: "application/json" } };
  if (body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  const r = await fetch(API + path, init);
  const type = r.headers.get("content-type") || "";
  const data = type.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new Error((data && data.detail) || ("HTTP " + r.status));
  return data;
}

function say(text, error) { const m = $("message"); m.textContent = text || ""; m.className = error ? "error" : ""; }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function money(v) { return "$" + Number(v).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 }); }

function left(m) {
  if (m.ended_at) return "-";
  const s = (Date.parse(m.expires_at) - Date.now()) / 1000;
  if (s <= 0) return "expired";
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), mi = Math.floor((s % 3600) / 60);
  return d ? `${d}d${h}h` : h ? `${h}h${mi}m` : `${mi}m`;
}

// -- sign in ---------------------------------------------------------------------------------------

async function signIn() {
  try { me = await call("GET", "/me"); } catch (e) { sessionStorage.removeItem("deepops-token"); say(e.message, true); return; }
  $("signin").hidden = true; $("signout").hidden = false; $("tabs").hidden = false;
  $("who").textContent = `${me.user} · ${me.role} · team ${me.team}`;
  const machines = me.role !== "finance", costs = me.role !== "member";
  $("tab-machines").hidden = !machines; $("tab-costs").hidden = !costs;
  show(machines ? "machines" : "costs");
}

function show(view) {
  for (const v of ["machines", "costs"]) { $("view-" + v).hidden = v !== view; $("tab-" + v).classList.toggle("on", v === view); }
  clearInterval(timer);
  say("");
  if (view === "machines") { loadPolicy().then(loadMachines); timer = setInterval(loadMachines, 3000); } else { loadCosts(); }
}

// -- machines ----------------------------------------------------------------------------------------

async function loadMachines() {
  let rows;
  try { rows = await call("GET", "/machines" + ($("show-ended").checked ? "?all=true" : "")); } catch (e) { say(e.message, true); return; }
  const body = $("machines").tBodies[0];
  body.replaceChildren(...rows.map((m) => {
    const live = !m.ended_at && !["terminating", "failed"].includes(m.status);
    const ttl = el("select", { "aria-label": "extend by" }, ...TTLS.slice(0, 5).filter(([, sec]) => !policy || sec <= policy.policies[policy.team].max_ttl_seconds).map(([t]) => el("option", { value: t }, t)));
    const actions = live ? el("td", {},
      ttl, " ", el("button", { class: "secondary", onclick: () => extend(m.id, ttl.value) }, "Extend"), " ",
      el("button", { onclick: () => release(m.id) }, "Release")) : el("td", {}, "");
    return el("tr", { "data-id": m.id },
      el("td", {}, m.name ? `${m.id} (${m.name})` : m.id),
      el("td", { class: "status-" + m.status, title: m.status_reason || "" }, m.status),
      el("td", {}, `${m.cloud} ${m.host || m.region || ""}`), el("td", {}, m.gpus), el("td", {}, m.image),
      el("td", {}, m.owner), el("td", { class: "n" }, left(m)), el("td", { class: "n" }, "$" + m.price_per_hour + "/h"),
      el("td", { class: "n" }, money(m.cost_usd || 0)), actions);
  }));
  $("no-machines").hidden = rows.length > 0;
}

async function extend(id, ttl) {
  try { const m = await call("POST", `/machines/${id}/extend`, { ttl }); say(`${id} now ends at ${m.expires_at}`); }
  catch (e) { say(e.message, true); }
  loadMachines();
}

async function release(id) {
  if (!confirm(`Release ${id}? Its processes end and its resources are removed.`)) return;
  say(`releasing ${id}…`);
  try { const r = await call("DELETE", `/machines/${id}`); say(r.cost_line); } catch (e) { say(e.message, true); }
  loadMachines();
}

function option(value, text) { return el("option", { value }, text); }

async function loadPolicy() {
  if (policy) return;
  try { policy = await call("GET", "/policy"); } catch (e) { say(e.message, true); return; }
  const p = policy.policies[policy.team];
  $("f-target").replaceChildren(...p.targets.map((t) => option(t, t === "onprem" ? "on-prem pool" : t)));
  $("f-host").replaceChildren(option("", "cheapest that fits"), ...policy.hosts.map((h) => option(h.name, h.name)));
  const models = p.gpu_models.includes("*") ? ["any"] : p.gpu_models;
  const gpus = [option("0", "none (CPU only)")];
  for (let n = 1; n <= Math.min(8, p.max_gpus_running); n++) for (const m of models) gpus.push(option(m === "any" ? String(n) : `${m}:${n}`, m === "any" ? `${n} GPU` : `${n} × ${m}`));
  $("f-gpus").replaceChildren(...gpus);
  const ttls = TTLS.filter(([, s]) => s <= p.max_ttl_seconds);
  $("f-ttl").replaceChildren(...ttls.map(([t, s]) => { const o = option(t, t); if (s === p.default_ttl_seconds) o.selected = true; return o; }));
  fillImages();
  const hours = (s) => s >= 86400 ? `${s / 86400} d` : `${s / 3600} h`;
  $("policy-note").textContent = `Team ${policy.team}: at most ${p.max_gpus_running} GPUs running, lifetime up to ${hours(p.max_ttl_seconds)}; ` +
    `GPU models ${p.gpu_models.join(", ")}; targets ${p.targets.join(", ")}.`;
}

function fillImages() {
  const cpu = $("f-gpus").value === "0";
  $("f-image").replaceChildren(...policy.images.filter((i) => !(cpu && i.gpu_required)).map((i) => option(i.name, i.name)));
}

async function requestMachine(ev) {
  ev.preventDefault();
  const body = { cloud: $("f-target").value, gpus: $("f-gpus").value, image: $("f-image").value, ttl: $("f-ttl").value };
  if ($("f-host").value && body.cloud === "onprem") body.host = $("f-host").value;
  if ($("f-project").value) body.project = $("f-project").value;
  if ($("f-name").value) body.name = $("f-name").value;
  $("f-submit").disabled = true;
  try { const m = await call("POST", "/machines", body); say(`${m.id} requested on ${m.host || m.region}; provisioning…`); }
  catch (e) { say(e.message, true); }
  $("f-submit").disabled = false;
  loadMachines();
}

// -- costs ---------------------------------------------------------------------------------------------

function monthsBack(end, n) {
  const [y, m] = end.split("-").map(Number), out = [];
  for (let i = n - 1; i >= 0; i--) { const d = new Date(Date.UTC(y, m - 1 - i, 1)); out.push(d.toISOString().slice(0, 7)); }
  return out;
}

function stackedMonths(months, reports) {
  const teams = [...new Set(reports.flatMap((r) => r.rows.map((x) => x.team)))].sort();
  const totals = reports.map((r) => r.rows.reduce((a, x) => a + x.cost, 0));
  const max = Math.max(1, ...totals) * 1.1, W = 900, H = 300, L = 70, B = 40, bw = (W - L - 20) / months.length;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Spend by team and month", id: "svg-months" });
  root.append(svg("title", {}, "Spend by team and month (USD)"));
  for (let i = 0; i <= 4; i++) {
    const y = H - B - (H - B - 20) * i / 4;
    root.append(svg("line", { x1: L, x2: W - 10, y1: y, y2: y, stroke: "#e7eaf0" }));
    root.append(svg("text", { x: L - 6, y: y + 4, "text-anchor": "end", "font-size": 12 }, money(max * i / 4)));
  }
  months.forEach((month, i) => {
    let y = H - B;
    for (const row of reports[i].rows) {
      const h = (H - B - 20) * row.cost / max, color = PALETTE[teams.indexOf(row.team) % PALETTE.length];
      const rect = svg("rect", { x: L + i * bw + 8, y: y - h, width: bw - 16, height: Math.max(h, 0), fill: color, class: "bar" });
      rect.append(svg("title", {}, `${row.team} ${month}: ${money(row.cost)}`));
      root.append(rect); y -= h;
    }
    root.append(svg("text", { x: L + i * bw + bw / 2, y: H - B + 18, "text-anchor": "middle", "font-size": 12 }, month));
  });
  const legend = el("div", { class: "legend" }, ...teams.map((t, i) => el("span", {}, el("i", { style: `background:${PALETTE[i % PALETTE.length]}` }), t)));
  return [root, legend];
}

function hbars(rows) {
  const W = 900, rowH = 26, H = 30 + rows.length * rowH, L = 140;
  const max = Math.max(0.01, ...rows.map((r) => r.cost));
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Idle waste by team", id: "svg-idle" });
  root.append(svg("title", {}, "Cost and idle cost by team (USD)"));
  rows.forEach((r, i) => {
    const y = 10 + i * rowH, full = (W - L - 120) * r.cost / max, idle = (W - L - 120) * r.idle_cost / max;
    root.append(svg("text", { x: L - 8, y: y + 15, "text-anchor": "end", "font-size": 13 }, r.team));
    root.append(svg("rect", { x: L, y, width: full, height: 18, fill: "#c9d8f5", class: "bar" }));
    root.append(svg("rect", { x: L, y, width: idle, height: 18, fill: "#d94a4a", class: "bar" }));
    root.append(svg("text", { x: L + full + 6, y: y + 14, "font-size": 12 }, `${money(r.idle_cost)} idle of ${money(r.cost)}`));
  });
  const legend = el("div", { class: "legend" }, el("span", {}, el("i", { style: "background:#c9d8f5" }), "cost"),
    el("span", {}, el("i", { style: "background:#d94a4a" }), "idle cost"));
  return [root, legend];
}

async function loadCosts() {
  const month = $("c-month").value || new Date().toISOString().slice(0, 7);
  $("c-month").value = month;
  const months = monthsBack(month, 6);
  let reports, budgets;
  try {
    reports = await Promise.all(months.map((m) => call("GET", `/costs?by=team&month=${m}`)));
    budgets = await call("GET", `/budgets?month=${month}`);
  } catch (e) { say(e.message, true); return; }
  $("chart-months").replaceChildren(...stackedMonths(months, reports));
  const current = reports[reports.length - 1];
  $("c-title").textContent = `${month} by team (USD at launch prices)`;
  const cells = (r) => [el("td", { class: "n" }, money(r.cost)), el("td", { class: "n" }, r.gpu_hours.toFixed(2)),
    el("td", { class: "n" }, r.idle_gpu_hours.toFixed(2)), el("td", { class: "n" }, money(r.idle_cost)),
    el("td", { class: "n" }, r.machines), el("td", { class: "n" }, r.running), el("td", { class: "n" }, r.forecast === undefined ? "-" : money(r.forecast))];
  $("c-table").tBodies[0].replaceChildren(...current.rows.map((r) => el("tr", {}, el("td", {}, r.team), ...cells(r))),
    el("tr", { class: "total" }, el("td", {}, "total"), ...cells(current.total)));
  $("chart-idle").replaceChildren(...hbars(current.rows));
  $("b-table").tBodies[0].replaceChildren(...budgets.budgets.map((b) => el("tr", {}, el("td", {}, b.kind), el("td", {}, b.name),
    el("td", { class: "n" }, money(b.budget)), el("td", { class: "n" }, money(b.spent)), el("td", { class: "n" }, b.percent.toFixed(1) + "%"),
    el("td", { class: "n" }, money(b.forecast)), el("td", {}, b.state))));
  $("no-budgets").hidden = budgets.budgets.length > 0;
}

async function downloadCsv() {
  const month = $("c-month").value;
  try {
    const text = await call("GET", `/costs?by=team&by=project&month=${month}&format=csv`);
    const a = el("a", { href: URL.createObjectURL(new Blob([text], { type: "text/csv" })), download: `deepops-costs-${month}.csv` });
    document.body.append(a); a.click(); a.remove();
    say(`downloaded deepops-costs-${month}.csv`);
  } catch (e) { say(e.message, true); }
}

// -- wiring ----------------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (ev) => { ev.preventDefault(); sessionStorage.setItem("deepops-token", $("token").value.trim()); $("token").value = ""; signIn(); });
  $("signout").addEventListener("click", () => { sessionStorage.removeItem("deepops-token"); location.reload(); });
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => show(b.dataset.view));
  $("show-ended").addEventListener("change", loadMachines);
  $("f-gpus").addEventListener("change", fillImages);
  $("request-form").addEventListener("submit", requestMachine);
  $("c-month").addEventListener("change", loadCosts);
  $("c-csv").addEventListener("click", downloadCsv);
  if (token()) signIn();
});
