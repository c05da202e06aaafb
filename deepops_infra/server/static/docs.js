"use strict";
// The API docs page: the operations of /openapi.json as plain HTML. Nothing is loaded from elsewhere.
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function resolve(doc, schema) {
  // {"$ref": "#/components/schemas/X"} -> the schema X (one level: enough to list a body's fields)
  const ref = schema && schema["$ref"];
  return ref ? ref.split("/").slice(1).reduce((o, k) => (o || {})[k], doc) || {} : schema || {};
}

function typeOf(doc, schema) {
  if (schema && schema["$ref"]) return schema["$ref"].split("/").pop();
  const s = resolve(doc, schema);
  if (s.anyOf) return s.anyOf.map((x) => typeOf(doc, x)).join(" | ");
  if (s.enum) return s.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (s.type === "array") return typeOf(doc, s.items) + "[]";
  return s.type || "any";
}

function table(head, rows) {
  return el("table", {}, el("tr", {}, ...head.map((h) => el("th", {}, h))),
    ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c)))));
}

function operation(doc, method, path, op) {
  const section = el("section", { id: op.operationId || method + path });
  section.append(el("h2", {}, el("code", {}, method.toUpperCase() + " " + path)), el("p", {}, op.summary || ""));
  if (op.description) section.append(el("p", { class: "note" }, op.description));
  const params = (op.parameters || []).map((p) => [p.name, p.in, p.required ? "yes" : "", typeOf(doc, p.schema),
    p.description || (p.schema && p.schema.description) || ""]);
  if (params.length) section.append(table(["parameter", "in", "required", "type", "description"], params));
  const body = op.requestBody && ((op.requestBody.content || {})["application/json"] || {}).schema;
  if (body) {
    const s = resolve(doc, body), required = s.required || [];
    const fields = Object.entries(s.properties || {}).map(([name, f]) => [name, required.includes(name) ? "yes" : "",
      typeOf(doc, f), f.description || ""]);
    section.append(el("p", {}, "JSON body: " + typeOf(doc, body)));
    if (fields.length) section.append(table(["field", "required", "type", "description"], fields));
  }
  const answers = Object.entries(op.responses || {}).map(([code, r]) => [code, r.description || ""]);
  section.append(table(["status", "answer"], answers));
  return section;
}

async function show() {
  const r = await fetch("/openapi.json", { headers: { Accept: "application/json" } });
  if (!r.ok) throw new Error("/openapi.json: HTTP " + r.status);
  const doc = await r.json();
  document.title = doc.info.title + " " + doc.info.version;
  const list = $("operations");
  list.append(el("p", {}, doc.info.description || ""));
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const [method, op] of Object.entries(item)) {
      if (["get", "post", "put", "patch", "delete"].includes(method)) list.append(operation(doc, method, path, op));
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  show().catch((e) => { $("message").textContent = String(e.message || e); $("message").className = "error"; });
});
