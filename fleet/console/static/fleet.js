// Fleet page: the poles as a table and a schematic SVG map, filtered by site, state and id.
"use strict";
(() => {
  const form = document.getElementById("filters"), tbody = document.querySelector("#devices tbody");
  const map = document.getElementById("map"), NS = "http://www.w3.org/2000/svg";
  let devices = [];

  const state = d => d.online ? (d.stale ? "stale" : "online") : "offline";
  const models = d => Object.entries(d.models || {}).map(([task, m]) => `${task}: ${m.name} ${m.version}`).join(", ");

  function shown() {
    const f = Object.fromEntries(new FormData(form));
    return devices.filter(d => (!f.site || d.site === f.site) && (!f.state || (f.state === "online") === d.online)
      && (!f.q || d.id.includes(f.q)));
  }

  function table(list) {
    tbody.replaceChildren(...list.map(d => RS.el("tr", {"data-device": d.id},
      RS.el("th", {scope: "row"}, RS.el("a", {href: "/noise?device=" + encodeURIComponent(d.id)}, d.id)),
      RS.el("td", {}, d.site), RS.el("td", {class: state(d)}, state(d)),
      RS.el("td", {title: d.last_seen ? RS.time(d.last_seen) : ""}, d.last_seen ? RS.ago(d.last_seen) : "never"),
      RS.el("td", {}, models(d)), RS.el("td", {}, RS.el("code", {}, (d.config_hash || "").slice(0, 12))),
      RS.el("td", {}, d.boot ?? ""))));
  }

  // Equirectangular around the poles' centre: fine for a city, where the earth is flat enough.
  function drawMap(list) {
    map.replaceChildren();
    const placed = list.filter(d => d.lat !== null && d.lon !== null);
    const W = map.viewBox.baseVal.width, H = map.viewBox.baseVal.height, pad = 20;
    if (!placed.length) {
      const t = document.createElementNS(NS, "text");
      t.setAttribute("x", W / 2); t.setAttribute("y", H / 2); t.setAttribute("text-anchor", "middle");
      t.textContent = "no pole with coordinates (device.location in its config)";
      map.append(t); return;
    }
    const lat0 = placed.reduce((s, d) => s + d.lat, 0) / placed.length, k = Math.cos(lat0 * Math.PI / 180);
    const xs = placed.map(d => d.lon * k), ys = placed.map(d => d.lat);
    const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
    const s = Math.min((W - 2 * pad) / Math.max(x1 - x0, 1e-6), (H - 2 * pad) / Math.max(y1 - y0, 1e-6));
    for (const d of placed) {
      const a = document.createElementNS(NS, "a");
      a.setAttribute("href", "/noise?device=" + encodeURIComponent(d.id));
      a.setAttribute("aria-label", `${d.id}, ${d.site}, ${state(d)}`);
      const c = document.createElementNS(NS, "circle");
      c.setAttribute("cx", pad + (d.lon * k - x0) * s + ((W - 2 * pad) - (x1 - x0) * s) / 2);
      c.setAttribute("cy", H - pad - (d.lat - y0) * s - ((H - 2 * pad) - (y1 - y0) * s) / 2);
      c.setAttribute("r", placed.length > 50 ? 5 : 8);
      c.setAttribute("class", "pole " + state(d));
      const t = document.createElementNS(NS, "title");
      t.textContent = `${d.id} (${d.site}): ${state(d)}`;
      c.append(t); a.append(c); map.append(a);
    }
  }

  function render() {
    const list = shown();
    const on = list.filter(d => d.online).length;
    document.getElementById("fleet-summary").textContent =
      `${list.length} of ${devices.length} poles shown: ${on} online, ${list.length - on} offline.`;
    table(list); drawMap(list); RS.syncUrl(form);
  }

  async function load() {
    const data = await RS.get("/api/devices");
    devices = data.devices;
    const site = document.getElementById("f-site"), keep = site.value || new URLSearchParams(location.search).get("site");
    site.replaceChildren(RS.el("option", {value: ""}, "all sites"), ...data.sites.map(s => RS.el("option", {value: s}, s)));
    if (keep) site.value = keep;
    render();
  }

  RS.fromUrl(form);
  RS.onFilter(form, render);
  load();
  setInterval(load, 10000);
})();
