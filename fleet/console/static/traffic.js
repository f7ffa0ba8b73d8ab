// Traffic page: congestion forecasts per detector over time, from the poles' congestion alerts.
"use strict";
(() => {
  const form = document.getElementById("filters"), svg = document.getElementById("plot");
  const tbody = document.querySelector("#alerts tbody"), summary = document.getElementById("traffic-summary");
  const sensorSel = document.getElementById("f-sensor");

  async function load() {
    const {device, hours, sensor} = Object.fromEntries(new FormData(form));
    RS.syncUrl(form);
    if (!device) { summary.textContent = "No pole has sent congestion alerts yet."; return; }
    const d = await RS.get(`/api/traffic/${encodeURIComponent(device)}` + (hours ? `?hours=${hours}` : ""));
    sensorSel.replaceChildren(RS.el("option", {value: ""}, "all"), ...d.sensors.map(s => RS.el("option", {value: s}, s)));
    sensorSel.value = d.sensors.includes(sensor) ? sensor : "";
    const list = d.alerts.filter(a => !sensorSel.value || a.s === sensorSel.value);
    const series = d.states.map((st, i) => ({name: st, cls: "dot-" + st, dots: true,
      points: list.filter(a => a.c === st && a.speed !== null)
        .map(a => [a.ts, a.speed, "dot-" + st, `${RS.time(a.ts)} ${a.s}: ${st} (${a.p.toFixed(2)}), ${a.speed} mph`])}));
    Plot.draw(svg, {series, yLabel: "mph", t0: d.t0, t1: d.t1, empty: "no congestion alerts from this pole in this period"});
    svg.dataset.points = list.length;
    summary.textContent = `${list.length} congestion alert(s) from ${sensorSel.value || d.sensors.length + " detector(s)"}.`;
    tbody.replaceChildren(...list.slice().reverse().map(a => RS.el("tr", {},
      RS.el("td", {}, RS.time(a.ts)), RS.el("td", {}, a.s), RS.el("td", {class: "dot-" + a.c}, a.c),
      RS.el("td", {}, a.p.toFixed(2)), RS.el("td", {}, a.speed === null ? "" : a.speed.toFixed(1)), RS.el("td", {}, `${a.mn || ""} ${a.mv || ""}`))));
  }

  RS.fromUrl(form);
  RS.onFilter(form, load);
  RS.devicePicker(document.getElementById("f-device"), "congestion").then(load);
  setInterval(load, 30000);
})();
