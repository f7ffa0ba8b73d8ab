// Helpers every page uses: JSON fetch, the CSRF header on state changes, DOM and time formatting.
"use strict";
const RS = {
  csrf: () => document.querySelector('meta[name="csrf-token"]').content,
  async get(path) {
    const r = await fetch(path, {headers: {Accept: "application/json"}});
    if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search); }
    if (!r.ok) throw new Error(path + ": " + r.status + " " + (await r.text()));
    return r.json();
  },
  async post(path, body) {
    const r = await fetch(path, {method: "POST", body: JSON.stringify(body || {}),
      headers: {"Content-Type": "application/json", "X-CSRF-Token": RS.csrf(), Accept: "application/json"}});
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(data.detail || r.status);
    return data;
  },
  // el("td", {class: "x"}, "text", child...)
  el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) e.setAttribute(k, v);
    for (const k of kids) e.append(k instanceof Node ? k : String(k));
    return e;
  },
  time(ms) { return new Date(ms).toISOString().replace("T", " ").slice(0, 19); },
  ago(ms) {
    const s = Math.max(0, (Date.now() - ms) / 1000);
    return s < 90 ? Math.round(s) + " s ago" : s < 5400 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago";
  },
  // Keeps the page's filters in its URL, so a view can be bookmarked and reloaded.
  syncUrl(form) {
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) q.set(k, v);
    history.replaceState(null, "", location.pathname + (q.toString() ? "?" + q : ""));
  },
  fromUrl(form) {
    const q = new URLSearchParams(location.search);
    for (const e of form.elements) if (e.name && q.has(e.name)) e.value = q.get(e.name);
  },
  // Text fields act as one types, selects once chosen (a select's "input" is not sent by every browser or driver).
  onFilter(form, fn) {
    form.addEventListener("input", e => { if (e.target.tagName === "INPUT") fn(); });
    form.addEventListener("change", e => { if (e.target.tagName === "SELECT") fn(); });
    form.addEventListener("submit", e => e.preventDefault());
  },
  // Every pole, those running `task` first (the default choice), unless the URL names one.
  async devicePicker(select, task) {
    const want = new URLSearchParams(location.search).get("device") || select.dataset.selected;
    const {devices} = await RS.get("/api/devices");
    const has = d => task in (d.models || {});
    const list = devices.filter(has).concat(devices.filter(d => !has(d)));
    select.replaceChildren(...list.map(d => RS.el("option", {value: d.id}, d.id + " (" + d.site + ")" + (has(d) ? "" : " - no " + task + " task"))));
    if (want && list.some(d => d.id === want)) select.value = want;
  },
};
