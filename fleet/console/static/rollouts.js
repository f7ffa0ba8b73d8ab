// Rollouts page: the list, and one rollout's stages, gates and events; operators may abort a running one.
"use strict";
(() => {
  const detail = document.getElementById("detail"), list = document.querySelector("#rollouts tbody");
  const abortBtn = document.getElementById("abort"), abortMsg = document.getElementById("abort-msg");
  const pct = f => (f * 100).toFixed(f < 0.1 ? 1 : 0).replace(/\.0$/, "") + " %";
  const stageText = r => `${r.stage + 1} of ${r.stages.length} (${pct(r.stages[r.stage])}), ${r.phase}`;
  let current = detail.dataset.id;

  function link(r) {
    const a = RS.el("a", {href: "/rollouts?id=" + r.id}, "#" + r.id);
    a.addEventListener("click", e => { e.preventDefault(); show(String(r.id)); });
    return a;
  }

  async function loadList() {
    const {rollouts} = await RS.get("/api/rollouts");
    list.replaceChildren(...rollouts.map(r => RS.el("tr", {"data-state": r.state},
      RS.el("td", {}, link(r)), RS.el("td", {}, r.task), RS.el("td", {}, `${r.version || "?"} (${r.release})`),
      RS.el("td", {class: "state-" + r.state}, r.state), RS.el("td", {}, stageText(r)),
      RS.el("td", {}, `${r.promoted} of ${r.poles}`), RS.el("td", {}, r.ever_ran), RS.el("td", {}, r.started_by),
      RS.el("td", {}, RS.time(r.created_at)), RS.el("td", {}, r.reason || ""))));
    if (!current && rollouts.length) show(String(rollouts[0].id), true);
  }

  function fmt(v) { return typeof v === "number" ? (Number.isInteger(v) ? v : v.toFixed(3)) : v === null ? "" : String(v); }

  async function show(id, quiet) {
    current = id;
    if (!quiet) history.replaceState(null, "", "/rollouts?id=" + id);
    const d = await RS.get("/api/rollouts/" + encodeURIComponent(id));
    const r = d.rollout;
    detail.hidden = false;
    document.getElementById("detail-h").textContent = `Rollout #${r.id}: ${r.task} ${r.version || ""} (release ${r.release})`;
    document.getElementById("detail-summary").textContent = `${r.state}, stage ${stageText(r)}; started by ${r.started_by} at ` +
      `${RS.time(r.created_at)}` + (r.finished_at ? `; ended ${RS.time(r.finished_at)}` : "") + (r.reason ? `. ${r.reason}` : "");
    if (abortBtn) abortBtn.hidden = r.state !== "running" || !!r.abort_requested_by;
    if (abortMsg && r.abort_requested_by) abortMsg.textContent = `Abort requested by ${r.abort_requested_by}.`;
    document.querySelector("#stages tbody").replaceChildren(...d.stages.map(s => RS.el("tr", {},
      RS.el("td", {}, s.stage + 1 + (s.stage === r.stage && r.state === "running" ? " (now)" : "")),
      RS.el("td", {}, pct(s.fraction)), RS.el("td", {}, s.poles),
      RS.el("td", {}, Object.entries(s.statuses).map(([k, n]) => `${k} ${n}`).join(", ")))));
    const g = r.gate;
    document.getElementById("gate-fired").textContent = g ? `The ${g.gate} gate fired at stage ${g.stage + 1}: ` +
      `${g.detail} (measured ${fmt(g.value)}, bound ${fmt(g.bound)})` : (r.state === "completed" ? "Every gate passed." : "No gate has fired.");
    const src = r.bounds.sources || {};
    document.querySelector("#gates tbody").replaceChildren(...Object.entries(r.bounds).filter(([k]) => k !== "sources")
      .map(([k, v]) => RS.el("tr", {}, RS.el("td", {}, k), RS.el("td", {}, fmt(v)), RS.el("td", {}, src[k] || "default"))));
    document.querySelector("#events tbody").replaceChildren(...d.events.map(e => RS.el("tr", {"data-kind": e.kind},
      RS.el("td", {}, RS.time(e.at)), RS.el("td", {}, e.kind), RS.el("td", {}, e.device || ""), RS.el("td", {}, e.actor || ""),
      RS.el("td", {class: "detail"}, JSON.stringify(e.detail)))));
  }

  if (abortBtn) abortBtn.addEventListener("click", async () => {
    if (!confirm(`Abort rollout #${current}? Every pole that got the candidate is rolled back.`)) return;
    abortBtn.disabled = true;
    try {
      const out = await RS.post(`/api/rollouts/${current}/abort`);
      abortMsg.textContent = `Abort requested by ${out.abort_requested_by}; the controller is rolling poles back.`;
    } catch (err) { abortMsg.textContent = "Abort refused: " + err.message; }
    abortBtn.disabled = false;
    await show(current, true);
  });

  loadList().then(() => current && show(current, true));
  setInterval(() => { loadList(); if (current) show(current, true); }, 5000);
})();
