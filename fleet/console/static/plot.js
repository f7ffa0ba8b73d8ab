// A small SVG time-series plot: lines, step lines, dots and vertical marks, with time and value axes.
"use strict";
const Plot = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const M = {l: 48, r: 130, t: 18, b: 30};
  const node = (tag, attrs, text) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const nice = (lo, hi, n) => {  // ~n round ticks covering [lo, hi]
    const raw = (hi - lo) / n, mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= raw);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) out.push(v);
    return out;
  };
  const timeTicks = (t0, t1) => {
    const steps = [60e3, 300e3, 900e3, 1800e3, 3600e3, 3 * 3600e3, 6 * 3600e3, 12 * 3600e3, 86400e3];
    const step = steps.find(s => (t1 - t0) / s <= 8) || 86400e3;
    const out = [];
    for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) out.push(t);
    return {ticks: out, fmt: t => new Date(t).toISOString().slice(step >= 86400e3 ? 5 : 11, step >= 86400e3 ? 10 : 16)};
  };
  // spec: {series: [{name, cls, points: [[t, v]], step, dots}], marks: [{t, label}], yLabel, t0, t1}
  function draw(svg, spec) {
    svg.replaceChildren();
    const W = svg.viewBox.baseVal.width, H = svg.viewBox.baseVal.height;
    const all = spec.series.flatMap(s => s.points);
    if (!all.length) { svg.append(node("text", {x: W / 2, y: H / 2, "text-anchor": "middle"}, spec.empty || "no data in this period")); return; }
    const ts = all.map(p => p[0]).concat((spec.marks || []).map(m => m.t));
    const t0 = spec.t0 ?? Math.min(...ts), t1 = Math.max(spec.t1 ?? 0, ...ts, t0 + 60e3);
    let lo = Math.min(...all.map(p => p[1])), hi = Math.max(...all.map(p => p[1]));
    if (hi - lo < 1) { lo -= 1; hi += 1; }
    const pad = (hi - lo) * 0.08; lo -= pad; hi += pad;
    const x = t => M.l + (t - t0) / (t1 - t0) * (W - M.l - M.r);
    const y = v => H - M.b - (v - lo) / (hi - lo) * (H - M.t - M.b);
    for (const v of nice(lo, hi, 6)) {
      svg.append(node("line", {class: "grid", x1: M.l, x2: W - M.r, y1: y(v), y2: y(v)}));
      svg.append(node("text", {x: M.l - 6, y: y(v) + 4, "text-anchor": "end"}, v.toFixed(hi - lo < 5 ? 1 : 0)));
    }
    const tt = timeTicks(t0, t1);
    for (const t of tt.ticks) svg.append(node("text", {x: x(t), y: H - M.b + 16, "text-anchor": "middle"}, tt.fmt(t)));
    svg.append(node("line", {class: "axis", x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b}));
    svg.append(node("line", {class: "axis", x1: M.l, x2: M.l, y1: M.t, y2: H - M.b}));
    svg.append(node("text", {x: 4, y: 12}, spec.yLabel || ""));
    svg.append(node("text", {x: W - M.r, y: H - 4, "text-anchor": "end"}, "UTC"));
    for (const m of spec.marks || []) {
      const g = node("g", {}); g.append(node("title", {}, m.label));
      g.append(node("line", {class: "mark", x1: x(m.t), x2: x(m.t), y1: M.t, y2: H - M.b}));
      g.append(node("path", {class: "mark", d: `M${x(m.t) - 4},${M.t - 8}h8l-4,8z`, fill: "#9a6700"}));
      svg.append(g);
    }
    spec.series.forEach((s, i) => {
      const pts = s.points.slice().sort((a, b) => a[0] - b[0]);
      if (s.dots) {
        for (const [t, v, cls, label] of pts) {
          const c = node("circle", {cx: x(t), cy: y(v), r: 4, class: cls || ""});
          if (label) c.append(node("title", {}, label));
          svg.append(c);
        }
      } else if (pts.length) {
        let d = "";
        pts.forEach(([t, v], j) => {
          d += j === 0 ? `M${x(t)},${y(v)}` : s.step ? `H${x(t)}V${y(v)}` : `L${x(t)},${y(v)}`;
        });
        if (s.step) d += `H${x(t1)}`;
        svg.append(node("path", {class: s.cls, d}));
      }
      const ly = M.t + 16 * i + 6;  // legend, right of the plot
      svg.append(s.dots ? node("circle", {class: s.cls, cx: W - M.r + 20, cy: ly, r: 4})
        : node("line", {class: s.cls, x1: W - M.r + 10, x2: W - M.r + 30, y1: ly, y2: ly}));
      svg.append(node("text", {x: W - M.r + 36, y: ly + 4, class: "legend"}, s.name));
    });
  }
  return {draw};
})();
