"""``/docs``: a small self-contained page (no CDN, works offline) over ``/openapi.json``.

It lists the operations by tag with their descriptions and parameters, and has a "try it" form
per operation that sends the request with ``fetch`` and shows the response.
"""

from __future__ import annotations

from typing import Final

DOCS_HTML: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ContextIQ REST API</title>
<style>
 body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 70rem; padding: 1rem; }
 h2 { border-bottom: 1px solid #ccc; margin-top: 2rem; }
 details { border: 1px solid #ddd; border-radius: 4px; margin: .4rem 0; padding: .3rem .6rem; }
 summary { cursor: pointer; }
 .m { display: inline-block; font-weight: bold; width: 4.5rem; }
 .GET { color: #0a6; } .POST { color: #06c; } .PATCH { color: #b60; }
 .DELETE { color: #c22; } .PUT { color: #83c; }
 code, pre, textarea, input { font-family: ui-monospace, monospace; font-size: 13px; }
 pre { background: #f6f6f6; overflow: auto; padding: .5rem; white-space: pre-wrap; }
 textarea { width: 100%; min-height: 6rem; }
 label { display: block; margin: .2rem 0; }
 label input { width: 24rem; }
 #auth input { width: 30rem; }
</style>
</head>
<body>
<h1 id="title">ContextIQ REST API</h1>
<p>The machine-readable document is <a href="openapi.json">openapi.json</a>.</p>
<div id="auth">
 <label>Authorization <input id="authorization" placeholder="Bearer ..."></label>
 <label>X-API-Key <input id="apikey"></label>
</div>
<div id="ops">Loading...</div>
<script>
"use strict";
const el = (tag, attrs = {}, ...kids) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const kid of kids) node.append(kid);
  return node;
};
const resolve = (doc, obj) => {
  while (obj && obj.$ref) {
    obj = obj.$ref.slice(2).split("/").reduce((o, k) => o[k], doc);
  }
  return obj;
};
async function send(method, path, op, form, out) {
  let url = path;
  const query = new URLSearchParams();
  for (const p of op.parameters || []) {
    const value = form.querySelector(`[data-param="${p.in}:${p.name}"]`).value;
    if (!value) continue;
    if (p.in === "path") url = url.replace(`{${p.name}}`, encodeURIComponent(value));
    else for (const v of value.split("\\n")) query.append(p.name, v);
  }
  if ([...query].length) url += "?" + query;
  const headers = {};
  const auth = document.getElementById("authorization").value;
  const key = document.getElementById("apikey").value;
  if (auth) headers["Authorization"] = auth;
  if (key) headers["X-API-Key"] = key;
  const init = { method: method.toUpperCase(), headers };
  const body = form.querySelector("textarea");
  if (body && body.value.trim()) {
    headers["Content-Type"] = "application/json";
    init.body = body.value;
  }
  out.textContent = "...";
  try {
    const res = await fetch(url, init);
    const text = await res.text();
    let shown = text;
    try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { /* not JSON */ }
    out.textContent = `${res.status} ${res.statusText}\\n\\n${shown}`;
  } catch (e) {
    out.textContent = String(e);
  }
}
async function main() {
  const doc = await (await fetch("openapi.json")).json();
  document.getElementById("title").textContent = doc.info.title;
  const byTag = new Map();
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const tag = (op.tags || ["other"])[0];
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push([path, method, op]);
    }
  }
  const root = document.getElementById("ops");
  root.textContent = "";
  for (const [tag, ops] of byTag) {
    root.append(el("h2", {}, tag));
    for (const [path, method, op] of ops) {
      const form = el("form");
      for (const p of op.parameters || []) {
        const hint = p.schema && p.schema.type ? ` (${p.in}, ${p.schema.type})` : ` (${p.in})`;
        form.append(el("label", {}, p.name + hint + (p.required ? " *" : "") + " ",
          el("input", { "data-param": `${p.in}:${p.name}` })));
      }
      if (op.requestBody) {
        const schema = resolve(doc, op.requestBody.content["application/json"].schema);
        const fields = Object.keys((schema && schema.properties) || {}).join(", ");
        form.append(el("label", {}, "JSON body" + (fields ? ` (fields: ${fields})` : "")),
          el("textarea", {}, "{}"));
      }
      const out = el("pre");
      const button = el("button", { type: "submit" }, "Send");
      form.append(button);
      form.addEventListener("submit", (ev) => {
        ev.preventDefault();
        send(method, path, op, form, out);
      });
      root.append(el("details", {},
        el("summary", {}, el("span", { class: `m ${method.toUpperCase()}` }, method.toUpperCase()),
          el("code", {}, path), " " + (op.summary || "")),
        el("p", {}, op.description || ""), form, out));
    }
  }
}
main().catch((e) => { document.getElementById("ops").textContent = String(e); });
</script>
</body>
</html>
"""
