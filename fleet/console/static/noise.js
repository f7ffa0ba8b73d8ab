// Noise page: one pole's level summaries (LAeq, LAFmax, L10, L90) against its LAeq limit, with its alerts.
"use strict";
(() => {
  const form = document.getElementById("filters"), svg = document.getElementById("plot");
  const tbody = document.querySelector("#alerts tbody"), summary = document.getElementById("noise-summary");

  async function load() {
    const {device, hours} = Object.fromEntries(new FormData(form));
    RS.syncUrl(form);
    if (!device) { summary.textContent = "No pole has sent level summaries yet."; return; }
    const d = await RS.get(`/api/noise/${encodeURIComponent(device)}?hours=${hours || 24}`);
    if (!hours) d.t0 = d.t1 = null;  // "fit the data": the axis spans the summaries found
    const mic = d.sensors[0], pts = d.summaries.filter(s => s.s === mic);
    const series = ["laeq", "lafmax", "l10", "l90"].map((k, i) => ({
      name: {laeq: "LAeq", lafmax: "LAFmax", l10: "L10", l90: "L90"}[k], cls: "series s" + i,
      points: pts.filter(s => s[k] !== null).map(s => [s.ts, s[k]])}));
    series.push({name: "LAeq limit", cls: "limit", step: true, points: pts.filter(s => s.lim !== null).map(s => [s.ts, s.lim])});
    const marks = d.alerts.map(a => ({t: a.ts, label: `${RS.time(a.ts)} ${a.k}: ${a.c} (${a.p.toFixed(2)})`}));
    Plot.draw(svg, {series, marks, yLabel: "dB(A)", t0: d.t0, t1: d.t1, empty: "no level summaries from this pole in this period"});
    svg.dataset.points = pts.length;  // what was drawn, for a person or a test to check against the API
    const last = pts[pts.length - 1];
    summary.textContent = pts.length ? `${pts.length} summaries from ${mic}; latest ${RS.time(last.ts)}: LAeq ${last.laeq.toFixed(1)} dB(A)` +
      (last.lim !== null ? ` (${last.per} limit ${last.lim.toFixed(0)})` : "") + `; ${d.alerts.length} alert(s).`
      : "No level summaries from this pole in this period.";
    tbody.replaceChildren(...d.alerts.slice().reverse().map(a => RS.el("tr", {},
      RS.el("td", {}, RS.time(a.ts)), RS.el("td", {}, a.k), RS.el("td", {}, a.c), RS.el("td", {}, a.p.toFixed(2)),
      RS.el("td", {}, a.m && a.m.lim !== undefined ? `${a.m.laeq ?? a.m.lafmax} / ${a.m.lim} dB` : ""))));
  }

  RS.fromUrl(form);
  RS.onFilter(form, load);
  RS.devicePicker(document.getElementById("f-device"), "noise").then(load);
  setInterval(load, 30000);
})();
