"use strict";
// The deepops web page: machines for data scientists, costs for finance. No external assets.
const API = "/api/v1";
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

const { money, rate } = MONEY;  // static/money.js: the one money format (deepops_infra/money.py)

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
  $("tab-machines").hidden = !machines; $("tab-costs").hidden = !costs; $("tab-admin").hidden = me.role !== "it-admin";
  show(machines ? "machines" : "costs");
}

function show(view) {
  for (const v of ["machines", "costs", "admin"]) { $("view-" + v).hidden = v !== view; $("tab-" + v).classList.toggle("on", v === view); }
  clearInterval(timer);
  say("");
  if (view === "machines") { loadPolicy().then(loadMachines); timer = setInterval(loadMachines, 3000); }
  else if (view === "admin") { loadAdmin(); } else { loadCosts(); }
}

// -- machines ----------------------------------------------------------------------------------------

// Whose machines the list shows, by role; admins filter by owner and team (in the page: the list is all theirs to see).
function machinesTitle() {
  const whose = me.role === "it-admin" ? "All machines" : me.role === "team-admin" ? `Team ${me.team}'s machines` : "Your machines";
  const owner = $("m-owner").value, team = $("m-team").value;
  return whose + (owner ? ` of ${owner}` : "") + (team && me.role === "it-admin" ? ` in team ${team}` : "");
}

function fillFilter(select, values, all) {
  const keep = select.value, unique = [...new Set(values)].sort();
  if (select.dataset.values === unique.join("\n")) return;  // unchanged: leave an open list alone
  select.dataset.values = unique.join("\n");
  select.replaceChildren(option("", all), ...unique.map((v) => option(v, v)));
  select.value = unique.includes(keep) ? keep : "";
}

async function loadMachines() {
  let rows;
  try { rows = await call("GET", "/machines" + ($("show-ended").checked ? "?all=true" : "")); } catch (e) { say(e.message, true); return; }
  const admin = me.role === "it-admin" || me.role === "team-admin";
  $("machine-filters").hidden = !admin;
  $("machines").classList.toggle("mine", !admin);
  if (admin) {
    fillFilter($("m-owner"), rows.map((m) => m.owner), "everyone");
    fillFilter($("m-team"), rows.map((m) => m.team), "every team");
    rows = rows.filter((m) => (!$("m-owner").value || m.owner === $("m-owner").value) && (!$("m-team").value || m.team === $("m-team").value));
  }
  $("machines-title").textContent = machinesTitle();
  const body = $("machines").tBodies[0];
  body.replaceChildren(...rows.map((m) => {
    const live = !m.ended_at && !["terminating", "failed"].includes(m.status);
    const ttl = el("select", { "aria-label": "extend by" }, ...TTLS.slice(0, 5).filter(([, sec]) => !policy || sec <= policy.policies[policy.team].max_ttl_seconds).map(([t]) => el("option", { value: t }, t)));
    const actions = live ? el("td", {},
      ttl, " ", el("button", { class: "secondary", onclick: () => extend(m.id, ttl.value) }, "Extend"), " ",
      el("button", { onclick: () => release(m.id) }, "Release")) : el("td", {}, "");
    return el("tr", { "data-id": m.id },
      el("td", {}, m.name ? `${m.id} (${m.name})` : m.id, ...(["ready", "idle"].includes(m.status) ? [connectHint(m), jobsLink(m)] : [])),
      el("td", { class: "status-" + m.status, title: m.status_reason || "" }, m.status),
      el("td", {}, `${m.cloud} ${m.host || m.region || ""}`), el("td", {}, m.gpus), el("td", {}, m.image),
      el("td", {}, m.owner), el("td", { class: "team" }, m.team), el("td", { class: "n" }, left(m)), el("td", { class: "n" }, rate(m.price_per_hour)),
      el("td", { class: "n" }, money(m.cost_usd || 0)), actions);
  }));
  $("no-machines").hidden = rows.length > 0;
}

// How to get into a running machine (docs/connecting.md): the CLI, and the host `deepops ssh-config --write` keeps.
function connectHint(m) {
  return el("div", { class: "connect" },
    el("code", { title: "a shell, or `-- CMD`, or `-L PORT -N` (with DEEPOPS_SERVER set to this server)" }, `deepops ssh ${m.id}`), " ",
    el("code", { title: "ssh, scp, rsync, VS Code Remote-SSH, after `deepops ssh-config --write`" }, `ssh deepops-${m.id}`));
}

// A machine's jobs (`deepops exec`) and the end of each one's output (server/jobs.py).
let jobsOf = null;

function jobsLink(m) {
  return el("div", { class: "jobs-link" }, el("button", { class: "secondary", onclick: () => openJobs(m.id) }, "Jobs and logs"));
}

async function openJobs(id) {
  jobsOf = id;
  $("jobs").hidden = false; $("jobs-title").textContent = `Jobs in ${id}`;
  $("job-log").hidden = true; $("job-log-text").textContent = "";
  await loadJobs();
  $("jobs").scrollIntoView({ block: "nearest" });
}

async function loadJobs() {
  if (!jobsOf) return;
  let data;
  try { data = await call("GET", `/machines/${jobsOf}/jobs`); } catch (e) { say(e.message, true); return; }
  $("jobs-table").tBodies[0].replaceChildren(...data.jobs.map((j) => el("tr", { "data-job": j.id },
    el("td", {}, j.id), el("td", { class: "job-" + j.state }, j.state), el("td", { class: "n" }, j.exit_status === null ? "-" : j.exit_status),
    el("td", {}, j.started_at), el("td", { class: "cmd" }, j.command),
    el("td", {}, el("button", { class: "secondary", onclick: () => showLog(j.id) }, "Log")))));
  $("no-jobs").hidden = data.jobs.length > 0;
  $("no-jobs").textContent = `No jobs in ${jobsOf} yet: start one with deepops exec ${jobsOf} -- CMD`;
}

async function showLog(job) {
  try {
    const log = await call("GET", `/machines/${jobsOf}/jobs/${job}/log`);
    $("job-log").hidden = false;
    $("job-log-title").textContent = `Output of ${job}` + (log.truncated ? " (its end)" : "");
    $("job-log-text").textContent = log.output || "(no output yet)";
  } catch (e) { say(e.message, true); }
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

// The request form offers what can be had now (GET /available): targets that can launch, the GPU
// models and counts free there within the team's remaining GPUs, lifetimes up to the policy's maximum.
let avail = null;

function durationText(s) {
  for (const [unit, n] of [["d", 86400], ["h", 3600], ["m", 60]]) if (s % n === 0) return `${s / n}${unit}`;
  return `${s}s`;
}

async function loadPolicy() {
  try {
    if (!policy) policy = await call("GET", "/policy");
    avail = await call("GET", "/available");
  } catch (e) { say(e.message, true); return; }
  const keep = $("f-target").value, ready = avail.targets.filter((t) => t.ready);
  $("f-target").replaceChildren(...ready.map((t) => option(t.target, t.target === "onprem" ? "on-prem pool" : t.target)));
  if (ready.some((t) => t.target === keep)) $("f-target").value = keep;
  const seconds = [...new Set([...TTLS.map(([, s]) => s).filter((s) => s <= avail.max_ttl_seconds), avail.max_ttl_seconds, avail.default_ttl_seconds])]
    .filter((s) => s <= avail.max_ttl_seconds).sort((a, b) => a - b);
  $("f-ttl").replaceChildren(...seconds.map((s) => { const o = option(durationText(s), durationText(s)); if (s === avail.default_ttl_seconds) o.defaultSelected = o.selected = true; return o; }));
  fillGpus();
  const p = policy.policies[policy.team], closed = avail.targets.filter((t) => !t.ready);
  $("policy-note").textContent = `Team ${policy.team}: ${avail.max_gpus} of ${p.max_gpus_running} GPUs free to request ` +
    `(${avail.running_gpus} running), lifetime up to ${durationText(avail.max_ttl_seconds)}; GPU models ${p.gpu_models.join(", ")}.` +
    (closed.length ? ` Not available now: ${closed.map((t) => `${t.target} (${t.why})`).join("; ")}.` : "");
}

function fillGpus() {
  const target = avail.targets.find((t) => t.target === $("f-target").value);
  const gpus = [option("0", "none (CPU only)")];
  for (const [model, counts] of Object.entries(target ? target.models : {})) {
    for (const n of counts) gpus.push(model ? option(`${model}:${n}`, `${n} × ${model}`) : option(String(n), `${n} GPU`));
  }
  $("f-gpus").replaceChildren(...gpus);
  const onprem = $("f-target").value === "onprem";
  $("f-host").disabled = !onprem;
  $("f-host").replaceChildren(option("", onprem ? "cheapest that fits" : "-"), ...(onprem ? policy.hosts.map((h) => option(h.name, h.name)) : []));
  fillImages();
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
  try {
    const m = await call("POST", "/machines", body);
    say(`${m.id} requested on ${m.host || m.region}; provisioning…`);
    $("request-form").reset();  // a fresh form, with what can be had now
    await loadPolicy();
  } catch (e) { say(e.message, true); }
  $("f-submit").disabled = false;
  loadMachines();
}

// -- costs ---------------------------------------------------------------------------------------------

function monthsBack(end, n) {
  const [y, m] = end.split("-").map(Number), out = [];
  for (let i = n - 1; i >= 0; i--) { const d = new Date(Date.UTC(y, m - 1 - i, 1)); out.push(d.toISOString().slice(0, 7)); }
  return out;
}

// One month's bars: a stack per team in the team's colour, or "no spend" for an empty month.
function stackedMonths(months, reports) {
  const teams = [...new Set(reports.flatMap((r) => r.rows.map((x) => x.team)))];
  const colors = MONEY.teamColors(teams);
  const totals = reports.map((r) => r.total.cost);
  const ticks = MONEY.axis(Math.max(0, ...totals)), max = ticks[ticks.length - 1][0];
  const W = 900, H = 300, T = 16, B = 40, L = 24 + 7.2 * Math.max(...ticks.map((t) => t[1].length));
  const plotH = H - B - T, bw = (W - L - 20) / months.length;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Spend by team and month", id: "svg-months" });
  root.append(svg("title", {}, "Spend by team and month (USD)"));
  for (const [value, label] of ticks) {
    const y = H - B - plotH * value / max;
    root.append(svg("line", { x1: L, x2: W - 10, y1: y, y2: y, stroke: "#e7eaf0" }));
    root.append(svg("text", { x: L - 6, y: y + 4, "text-anchor": "end", "font-size": 12, class: "tick" }, label));
  }
  months.forEach((month, i) => {
    let y = H - B;
    const x = L + i * bw;
    if (!(totals[i] > 0)) {
      root.append(svg("text", { x: x + bw / 2, y: H - B - 8, "text-anchor": "middle", "font-size": 12, fill: "#5b6577", class: "empty" }, "no spend"));
    }
    for (const row of reports[i].rows) {
      if (!(row.cost > 0)) continue;
      const h = plotH * row.cost / max;
      const rect = svg("rect", { x: x + 8, y: y - h, width: bw - 16, height: h, fill: colors[row.team], class: "bar", "data-team": row.team });
      rect.append(svg("title", {}, `${row.team} ${month}: ${money(row.cost)}`));
      root.append(rect); y -= h;
    }
    root.append(svg("text", { x: x + bw / 2, y: H - B + 18, "text-anchor": "middle", "font-size": 12 }, month));
  });
  const legend = el("div", { class: "legend" }, ...Object.keys(colors).sort().map((t) => el("span", {}, el("i", { style: `background:${colors[t]}` }), t)));
  return [root, legend];
}

// Cost per team in the team's colour, the idle part over it in the idle colour, a round-valued axis.
function hbars(rows) {
  rows = rows.filter((r) => r.cost > 0);
  if (!rows.length) return [el("p", { class: "empty" }, "No spend this month, so no idle waste.")];
  const colors = MONEY.teamColors(rows.map((r) => r.team));
  const labels = rows.map((r) => `${money(r.idle_cost)} idle of ${money(r.cost)}`);
  const ticks = MONEY.axis(Math.max(...rows.map((r) => r.cost))), max = ticks[ticks.length - 1][0];
  const clip = (t) => (t.length > 32 ? t.slice(0, 31) + "\u2026" : t);
  const L = 16 + 8 * Math.max(...rows.map((r) => clip(r.team).length)), R = 12 + 7.2 * Math.max(...labels.map((t) => t.length));
  const W = 900, rowH = 26, axisY = 10 + rows.length * rowH, H = axisY + 26, plotW = W - L - R;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Idle waste by team", id: "svg-idle" });
  root.append(svg("title", {}, "Cost and idle cost by team (USD)"));
  for (const [value, label] of ticks) {
    const x = L + plotW * value / max;
    root.append(svg("line", { x1: x, x2: x, y1: 4, y2: axisY, stroke: "#e7eaf0" }));
    root.append(svg("text", { x, y: axisY + 16, "text-anchor": "middle", "font-size": 12, class: "tick" }, label));
  }
  rows.forEach((r, i) => {
    const y = 10 + i * rowH, full = plotW * r.cost / max, idle = plotW * r.idle_cost / max;
    const name = svg("text", { x: L - 8, y: y + 15, "text-anchor": "end", "font-size": 13 }, clip(r.team));
    name.append(svg("title", {}, r.team)); root.append(name);
    root.append(svg("rect", { x: L, y, width: full, height: 18, fill: colors[r.team], class: "bar", "data-team": r.team }));
    if (r.idle_cost > 0) root.append(svg("rect", { x: L, y, width: idle, height: 18, fill: MONEY.IDLE, class: "bar idle" }));
    root.append(svg("text", { x: L + full + 6, y: y + 14, "font-size": 12 }, labels[i]));
  });
  const legend = el("div", { class: "legend" }, ...Object.keys(colors).sort().map((t) => el("span", {}, el("i", { style: `background:${colors[t]}` }), t)),
    el("span", {}, el("i", { style: `background:${MONEY.IDLE}` }), "spent while idle"));
  return [root, legend];
}

const costQuery = (month) => `month=${month}&idle=${$("c-idle").value}`;

async function loadCosts() {
  const month = $("c-month").value || new Date().toISOString().slice(0, 7);
  $("c-month").value = month;
  const months = monthsBack(month, 6);
  let reports, budgets;
  try {
    reports = await Promise.all(months.map((m) => call("GET", `/costs?by=team&${costQuery(m)}`)));
    budgets = await call("GET", `/budgets?month=${month}`);
  } catch (e) { say(e.message, true); return; }
  $("chart-months").replaceChildren(...stackedMonths(months, reports));
  const current = reports[reports.length - 1];
  const shared = current.idle === "share";
  $("c-title").textContent = `${month} by team (USD at launch prices${shared ? ", idle cost shared in proportion to active cost" : ""})`;
  $("c-idle-head").textContent = shared ? "Shared idle cost" : "Idle cost";
  const over = new Set(budgets.budgets.filter((b) => b.kind === "team" && b.spent >= b.budget).map((b) => b.name));
  const cells = (r) => [el("td", { class: "n" }, money(r.cost)), el("td", { class: "n" }, MONEY.hours(r.gpu_hours, 2)),
    el("td", { class: "n" }, MONEY.hours(r.idle_gpu_hours, 2)), el("td", { class: "n" }, money(r.idle_cost)),
    el("td", { class: "n" }, r.machines), el("td", { class: "n" }, r.running), el("td", { class: "n" }, r.forecast === undefined ? "-" : money(r.forecast))];
  const teamRow = (r) => el("tr", over.has(r.team) ? { class: "over", title: "over its monthly budget" } : {}, el("td", {}, r.team), ...cells(r));
  $("c-table").tBodies[0].replaceChildren(...current.rows.map(teamRow), el("tr", { class: "total" }, el("td", {}, "total"), ...cells(current.total)));
  $("no-costs").hidden = current.rows.length > 0;
  let own = current;  // the idle chart shows each team's own idle time, whichever way the table counts it
  if (shared) { try { own = await call("GET", `/costs?by=team&month=${month}`); } catch (e) { say(e.message, true); return; } }
  $("chart-idle").replaceChildren(...hbars(own.rows));
  $("b-table").tBodies[0].replaceChildren(...budgets.budgets.map((b) => el("tr", b.spent >= b.budget ? { class: "over" } : {}, el("td", {}, b.kind), el("td", {}, b.name),
    el("td", { class: "n" }, money(b.budget)), el("td", { class: "n" }, money(b.spent)), el("td", { class: "n" }, b.percent.toFixed(1) + "%"),
    el("td", { class: "n" }, money(b.forecast)), el("td", {}, b.state))));
  $("no-budgets").hidden = budgets.budgets.length > 0;
}

// Downloads: the CSV by team and project, and the HTML report (self-contained, for mail or archive).
async function download(format, type, name) {
  const month = $("c-month").value;
  const by = format === "csv" ? "by=team&by=project" : "by=team";
  try {
    const text = await call("GET", `/costs?${by}&${costQuery(month)}&format=${format}`);
    const file = `deepops-costs-${month}.${name}`;
    const a = el("a", { href: URL.createObjectURL(new Blob([text], { type })), download: file });
    document.body.append(a); a.click(); a.remove();
    say(`downloaded ${file}`);
  } catch (e) { say(e.message, true); }
}

// -- wiring ----------------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (ev) => { ev.preventDefault(); sessionStorage.setItem("deepops-token", $("token").value.trim()); $("token").value = ""; signIn(); });
  $("signout").addEventListener("click", () => { sessionStorage.removeItem("deepops-token"); location.reload(); });
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => show(b.dataset.view));
  $("show-ended").addEventListener("change", loadMachines);
  $("jobs-refresh").addEventListener("click", loadJobs);
  $("jobs-close").addEventListener("click", () => { jobsOf = null; $("jobs").hidden = true; });
  $("m-owner").addEventListener("change", loadMachines);
  $("m-team").addEventListener("change", loadMachines);
  $("f-target").addEventListener("change", fillGpus);
  $("f-gpus").addEventListener("change", fillImages);
  $("request-form").addEventListener("submit", requestMachine);
  $("c-month").addEventListener("change", loadCosts);
  $("c-csv").addEventListener("click", () => download("csv", "text/csv", "csv"));
  $("c-html").addEventListener("click", () => download("html", "text/html", "html"));
  $("c-idle").addEventListener("change", loadCosts);
  if (token()) signIn();
});
