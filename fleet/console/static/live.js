// Live alerts: server-sent events from /api/live, newest first; filter and pause in the page.
// Latency = arrival here - the end of the alert's window (ts), corrected by the server's clock
// when the two clocks differ by more than half a second (the stream's hello event).
"use strict";
(() => {
  const form = document.getElementById("filters"), tbody = document.querySelector("#alerts tbody");
  const status = document.getElementById("live-status"), pauseBtn = document.getElementById("pause");
  const canAck = document.getElementById("alerts").dataset.canAck === "yes";
  const KEEP = 500, SHOW = 200;
  let alerts = [], held = [], paused = false, offset = 0, received = 0;

  const f = () => Object.fromEntries(new FormData(form));
  const match = (a, q) => (!q.kind || a.k === q.kind) && (!q.pole || a.device.includes(q.pole)) && a.p >= (+q.p || 0);

  function ackCell(a) {
    if (a.acked_by) return RS.el("td", {}, "by " + a.acked_by);
    if (!canAck) return RS.el("td", {}, "no");
    const b = RS.el("button", {type: "button", "aria-label": "Acknowledge alert " + a.id}, "Acknowledge");
    b.addEventListener("click", async () => {
      try { const r = await RS.post("/api/alerts/" + encodeURIComponent(a.id) + "/ack"); a.acked_by = r.by; b.parentNode.replaceWith(ackCell(a)); }
      catch (e) { status.textContent = "acknowledge failed: " + e.message; }
    });
    return RS.el("td", {}, b);
  }

  function row(a, fresh) {
    const lat = a.rx - a.ts;
    return RS.el("tr", {"data-id": a.id, "data-ts": a.ts, "data-rx": a.rx, class: fresh ? "fresh" : null},
      RS.el("td", {}, RS.time(a.ts)), RS.el("th", {scope: "row"}, a.device), RS.el("td", {}, a.k),
      RS.el("td", {}, a.c), RS.el("td", {}, a.p.toFixed(2)),
      a.live ? RS.el("td", {}, (lat / 1000).toFixed(2) + " s")
        : RS.el("td", {title: "stored before this page opened"}, "earlier"), RS.el("td", {}, a.s), ackCell(a));
  }

  function renderAll() {
    const q = f();
    tbody.replaceChildren(...alerts.filter(a => match(a, q)).slice(0, SHOW).map(a => row(a, false)));
    RS.syncUrl(form);
  }

  function add(list, live) {
    const have = new Set(alerts.map(a => a.id));  // a reconnect resends what was stored around its gap
    list = list.filter(a => !have.has(a.id));
    const q = f(), now = Date.now() + offset;
    for (const a of list) { a.rx ??= now; a.live = live; }
    alerts = list.slice().reverse().concat(alerts).slice(0, KEEP);
    const rows = list.filter(a => match(a, q)).map(a => row(a, live));
    tbody.prepend(...rows.reverse());
    while (tbody.rows.length > SHOW) tbody.deleteRow(-1);
  }

  function showStatus() {
    status.textContent = paused ? `paused: ${held.length} new alert(s) held` : `live: ${received} alert(s) received`;
  }

  pauseBtn.addEventListener("click", () => {
    paused = !paused;
    pauseBtn.setAttribute("aria-pressed", paused);
    pauseBtn.textContent = paused ? "Resume" : "Pause";
    if (!paused) { add(held, true); held = []; }
    showStatus();
  });
  RS.onFilter(form, renderAll);
  RS.fromUrl(form);

  RS.get("/api/alerts?limit=100").then(d => { add(d.alerts.reverse(), false); connect(); });

  function connect() {
    const es = new EventSource("/api/live");
    // The server's clock is used only when it differs by more than the measurement's own error
    // (the hello's transit): on one machine or NTP-synced clocks, the browser's clock is the better one.
    es.addEventListener("hello", e => {
      const d = JSON.parse(e.data).now - Date.now();
      offset = Math.abs(d) > 500 ? d : 0;
      showStatus();
    });
    es.addEventListener("alerts", e => {
      const list = JSON.parse(e.data), now = Date.now() + offset;
      for (const a of list) a.rx = now;  // arrival, not display: a paused feed keeps the true latency
      received += list.length;
      if (paused) held = held.concat(list).slice(-KEEP); else add(list, true);
      showStatus();
    });
    es.onerror = () => { status.textContent = "connection lost: reconnecting…"; };
  }
})();
