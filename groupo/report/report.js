// The run report's page: plots (uPlot), alarms, evaluations, a filterable table of samples, config.
// Data comes from the inline JSON written by groupo/report/html.py; nothing is fetched.
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("data").textContent);
  const runs = D.runs;
  const errors = [];
  window.addEventListener("error", (e) => errors.push(String(e.message)));
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#bcbd22", "#8c564b", "#e377c2", "#17becf"];
  const DASHES = [[], [8, 4], [2, 3], [12, 3, 2, 3]];
  const el = (tag, attrs, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const k of kids) e.append(k);
    return e;
  };
  const tick = (v) => (v === 0 ? "0" : Math.abs(v) < 1e-3 || Math.abs(v) >= 1e6 ? v.toExponential(1) : String(+v.toPrecision(3)));
  const fmt = (v) => (v === null || v === undefined ? "" : typeof v === "number" ? +v.toPrecision(4) + "" : String(v));

  // --- summary of each run
  const sum = document.getElementById("summary");
  for (const r of runs) {
    const s = r.summary || {};
    const keys = Object.keys(s).filter((k) => typeof s[k] !== "object" || s[k] === null);
    if (!keys.length) continue;
    const t = el("table", { class: "kv" }, el("caption", {}, r.name));
    for (const k of keys) t.append(el("tr", {}, el("th", {}, k), el("td", {}, fmt(s[k]))));
    sum.append(t);
  }

  // --- alarms
  const alarms = runs.flatMap((r, i) => r.alarms.map((a) => Object.assign({ run: r.name, runIndex: i }, a)));
  const at = document.getElementById("alarms");
  if (!alarms.length) at.append(el("p", {}, "No alarm fired."));
  else {
    const t = el("table", { class: "grid" }, el("tr", {}, ...["run", "step", "alarm", "action", "message", "advice"].map((h) => el("th", {}, h))));
    for (const a of alarms) t.append(el("tr", { class: "alarm-" + a.action }, ...[a.run, a.step, a.name, a.action, a.message, a.advice].map((v) => el("td", {}, fmt(v)))));
    at.append(t);
  }

  // --- plots
  const expand = (key) => {
    if (!key.endsWith("*")) return [key];
    const pre = key.slice(0, -1);
    const found = new Set();
    for (const r of runs) for (const k of Object.keys(r.series)) if (k.startsWith(pre)) found.add(k);
    return [...found].sort();
  };
  const has = (r, k) => (r.series[k] || []).some((v) => v !== null);
  const alarmMarks = {
    hooks: {
      draw: [(u) => {
        const ctx = u.ctx;
        ctx.save();
        ctx.lineWidth = 2 * devicePixelRatio;
        ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
        for (const a of alarms) {
          const x = u.valToPos(a.step, "x", true);
          if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
          ctx.strokeStyle = a.action === "stop" ? "#e00000" : "#ff9900";
          ctx.beginPath();
          ctx.moveTo(x, u.bbox.top);
          ctx.lineTo(x, u.bbox.top + u.bbox.height);
          ctx.stroke();
        }
        ctx.restore();
      }],
    },
  };
  // A constant series (often 0: no timeouts) gets a small range around it, not uPlot's 0..100.
  const yRange = (u, lo, hi) => (lo === hi ? [lo - (Math.abs(lo) || 1) * 0.5, hi + (Math.abs(hi) || 1) * 0.5]
    : uPlot.rangeNum(lo, hi, 0.1, true));
  const plotsDiv = document.getElementById("plots");
  const width = () => Math.max(320, Math.min(560, plotsDiv.clientWidth / 2 - 24));
  let drawn = 0, empty = 0;
  const made = [];
  for (const [id, title, pattern] of D.plots) {
    const keys = pattern.flatMap(expand);
    const box = el("div", { class: "plot", id: "plot-" + id }, el("h3", {}, title));
    plotsDiv.append(box);
    const lines = [];
    runs.forEach((r, ri) => keys.forEach((k, ki) => { if (has(r, k)) lines.push({ r, ri, k, ki }); }));
    if (!lines.length) {
      box.append(el("p", { class: "empty" }, "not measured in " + (runs.length > 1 ? "these runs" : "this run") + ": " + keys.join(", ")));
      box.dataset.state = "empty";
      empty++;
      continue;
    }
    const steps = [...new Set(lines.flatMap((l) => l.r.series.step))].sort((a, b) => a - b);
    const data = [steps];
    for (const l of lines) {
      const m = new Map(l.r.series.step.map((s, i) => [s, l.r.series[l.k][i]]));
      data.push(steps.map((s) => (m.has(s) ? m.get(s) : null)));
    }
    const series = [{ label: "step" }].concat(lines.map((l) => ({
      label: (runs.length > 1 ? l.r.name + " " : "") + l.k,
      stroke: COLORS[l.ki % COLORS.length], width: 2, dash: DASHES[l.ri % DASHES.length], spanGaps: true,
      points: { show: l.k.startsWith("accuracy/eval") || steps.length < 30, size: 5 },
      value: (u, v) => fmt(v),
    })));
    const u = new uPlot({
      width: width(), height: 220, series, plugins: [alarmMarks],
      scales: { x: { time: false }, y: { range: yRange } }, cursor: { sync: { key: "steps" } },
      axes: [{ label: "step", incrs: [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000] }, { size: 64, values: (u, splits) => splits.map(tick) }],
      legend: { live: true },
    }, data, box);
    u.root.title = keys.map((k) => k + ": " + (D.keys[k] || D.keys[k.replace(/\/[^/]*$/, "/<name>")] || D.keys[k.replace(/^accuracy\/eval_.*/, "accuracy/eval_<split>")] || "")).join("\n");
    made.push({ u, box, lines });
  }
  // "drawn" = a series' own colour is on the canvas (the test checks each plot shows a curve).
  const isDrawn = ({ u, lines }) => {
    const c = u.ctx.canvas;
    const px = u.ctx.getImageData(0, 0, c.width, c.height).data;
    const want = new Set(lines.map((l) => COLORS[l.ki % COLORS.length]));
    for (const hex of want) {
      const rgb = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
      let n = 0;
      for (let i = 0; i < px.length; i += 4) {
        if (Math.abs(px[i] - rgb[0]) < 8 && Math.abs(px[i + 1] - rgb[1]) < 8 && Math.abs(px[i + 2] - rgb[2]) < 8 && px[i + 3] > 200 && ++n >= 4) return true;
      }
    }
    return false;
  };
  const checkDrawn = () => {  // uPlot draws in a later task: look once it has
    for (const m of made) {
      m.box.dataset.state = isDrawn(m) ? "drawn" : "blank";
      if (m.box.dataset.state === "drawn") drawn++;
    }
    document.body.dataset.drawn = String(drawn);
    document.body.dataset.errors = JSON.stringify(errors);
    document.body.dataset.ready = "1";
  };
  window.addEventListener("resize", () => made.forEach(({ u }) => u.setSize({ width: width(), height: 220 })));

  // --- evaluations
  const ev = document.getElementById("evals");
  for (const r of runs) {
    if (!r.evals.length) continue;
    const cols = [...new Set(r.evals.flatMap((e) => Object.keys(e)))];
    const t = el("table", { class: "grid" }, el("caption", {}, r.name), el("tr", {}, ...cols.map((c) => el("th", {}, c))));
    r.evals.forEach((e, i) => t.append(el("tr", {}, ...cols.map((c) => el("td", {}, c === "step" && i === 0 && e.step === 0 ? "0 (before)" : fmt(e[c]))))));
    ev.append(t);
  }
  if (!ev.children.length) ev.append(el("p", {}, "No evaluation recorded."));

  // --- samples: search text, steps from/to, a reward function's range
  const samples = runs.flatMap((r) => r.samples.map((s) => Object.assign({ run: r.name }, s)));
  const fns = [...new Set(samples.flatMap((s) => Object.keys(s.rewards || {})))].sort();
  const sd = document.getElementById("samples");
  const q = el("input", { type: "search", placeholder: "search prompt, answer, completion", id: "q", size: 36 });
  const s0 = el("input", { type: "number", placeholder: "step from", id: "step-from", style: "width:7em" });
  const s1 = el("input", { type: "number", placeholder: "step to", id: "step-to", style: "width:7em" });
  const fsel = el("select", { id: "fn" }, el("option", { value: "" }, "any reward"), ...fns.map((f) => el("option", { value: f }, f)));
  const r0 = el("input", { type: "number", step: "any", placeholder: "min", id: "r-min", style: "width:6em" });
  const r1 = el("input", { type: "number", step: "any", placeholder: "max", id: "r-max", style: "width:6em" });
  const count = el("span", { id: "count" });
  sd.append(el("div", { class: "filters" }, q, " steps ", s0, s1, " reward ", fsel, r0, r1, " ", count));
  const table = el("table", { class: "grid samples" });
  sd.append(table);
  const head = ["run", "step", "prompt", "answer", "completion", "finish", ...fns];
  const LIMIT = 300;
  const num = (e) => (e.value === "" ? null : Number(e.value));
  // An episode with tools shows its turns: the model's, and each tool's result marked as such.
  const completion = (s) => (s.messages && s.messages.length
    ? el("div", { class: "episode" }, ...s.messages.map((m) => el("div", { class: "turn " + (m.role === "tool" ? "tool" : "model") },
      el("span", { class: "who" }, m.role === "tool" ? "tool" + (m.name ? ": " + m.name : "") : "model"), el("pre", {}, m.content))))
    : el("pre", {}, s.completion));
  const show = () => {
    const text = q.value.toLowerCase(), a = num(s0), b = num(s1), lo = num(r0), hi = num(r1), f = fsel.value;
    const keep = samples.filter((s) => {
      if (a !== null && s.step < a) return false;
      if (b !== null && s.step > b) return false;
      const vals = f ? [s.rewards[f]] : Object.values(s.rewards || {});
      if (lo !== null && !vals.some((v) => v !== null && v !== undefined && v >= lo)) return false;
      if (hi !== null && !vals.some((v) => v !== null && v !== undefined && v <= hi)) return false;
      const turns = (s.messages || []).map((m) => m.content).join("\n");
      return !text || (s.prompt + "\n" + s.answer + "\n" + s.completion + "\n" + turns).toLowerCase().includes(text);
    });
    count.textContent = keep.length + " of " + samples.length + " samples" + (keep.length > LIMIT ? " (first " + LIMIT + " shown)" : "");
    table.replaceChildren(el("tr", {}, ...head.map((h) => el("th", {}, h))));
    for (const s of keep.slice(0, LIMIT)) {
      table.append(el("tr", {}, el("td", {}, s.run), el("td", {}, fmt(s.step)), el("td", {}, el("pre", {}, s.prompt)),
        el("td", {}, el("pre", {}, s.answer)), el("td", {}, completion(s)), el("td", {}, fmt(s.finish_reason)),
        ...fns.map((f) => el("td", { class: "num" }, fmt(s.rewards[f])))));
    }
  };
  for (const e of [q, s0, s1, fsel, r0, r1]) e.addEventListener("input", show);
  show();

  // --- resolved configuration
  const cd = document.getElementById("config");
  for (const r of runs) cd.append(el("details", runs.length === 1 ? { open: "" } : {}, el("summary", {}, r.name + " (" + r.path + "/config.yaml)"), el("pre", {}, r.config || "(no config.yaml)")));

  // For tests and the curious: how many plots were drawn, left empty, and any script error.
  document.body.dataset.plots = String(made.length + empty);
  document.body.dataset.empty = String(empty);
  requestAnimationFrame(() => setTimeout(checkDrawn, 0));
})();
