// The dashboard of a streamkernel run: the graph from /api/graph (drawn as
// SVG here), the kernels' figures from /api/events (server-sent events,
// one state every half second). Rates are differences between the newest
// state and one about two seconds older. No library, no build step.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const BOX_W = 190, BOX_H = 70, GAP_X = 60, GAP_Y = 24, PAD = 14;
const WINDOW = 5; // states kept for rates (about 2 s at one state per 0.5 s)

const dashboard = { graph: null, states: [], updates: 0, ended: false, boxes: new Map() };
window.dashboard = dashboard; // for a look from the browser's console (and the tests)

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function count(n) {
  if (n === null || n === undefined) return "-";
  return Math.round(n).toLocaleString("en-US");
}

function rate(n) {
  if (n === null || n === undefined || !isFinite(n)) return "-";
  if (n >= 1e6) return (n / 1e6).toFixed(2) + "M";
  if (n >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return n.toFixed(n < 10 ? 1 : 0);
}

function seconds(s) {
  if (s === null || s === undefined) return "-";
  if (s < 1) return (s * 1000).toFixed(1) + " ms";
  if (s < 120) return s.toFixed(1) + " s";
  const m = Math.floor(s / 60);
  return m < 120 ? `${m} min ${Math.floor(s % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

// A watermark further ahead of the wall clock than this (seconds) is not seconds on it:
// event times in milliseconds (1.7e12) or microseconds (1.7e15), whose lag was "0.0 ms"
const AHEAD = 86400;

function onWallClock(w, now) {
  // event times in seconds since the epoch, as the wall clock's (above 1e8: 1973)
  return w > 1e8 && w <= now + AHEAD;
}

function watermarkText(w, now) {
  if (w === null || w === undefined) return "-";
  if (w === "end") return "end of input";
  // a date for event times on the wall clock; any other watermark as the number it is: event
  // times in microseconds (1.7e15, past JavaScript's dates at 8.64e12 s) threw a RangeError in
  // toISOString, and every step after the source was left at "-"; in milliseconds (1.7e12)
  // they were dated in the year 55,840
  if (onWallClock(w, now)) return new Date(w * 1000).toISOString().replace("T", " ").replace("Z", "");
  if (Math.abs(w) >= 1e8) return Math.round(w).toLocaleString("en-US");
  return w.toFixed(3);
}

function lowerWatermark(a, b) {
  // the job's watermark: the lowest of its sinks' ("end" is above every time; null: none yet)
  if (a === null || a === "end") return b ?? a;
  if (b === null || b === "end") return a;
  return Math.min(a, b);
}

function lag(w, now) {
  if (w === null || w === undefined) return "-";
  if (w === "end") return "0";
  // only event times on the wall clock have a lag (one a little ahead, clocks apart: none)
  return onWallClock(w, now) ? seconds(Math.max(0, now - w)) : "-";
}

// -- the graph ---------------------------------------------------------------------------

function layers(steps) {
  // each step one column right of its rightmost input (nodes come in topological order);
  // a loop's feedback, an input from a later step, places nothing (it was NaN: no box drawn)
  const layer = new Map();
  for (const step of steps) {
    layer.set(step.id, step.inputs.reduce(
      (l, e) => (layer.has(e.from) ? Math.max(l, layer.get(e.from) + 1) : l), 0));
  }
  return layer;
}

function drawGraph(graph) {
  const svg = document.getElementById("graph");
  svg.replaceChildren();
  const defs = el("defs");
  for (const [id, color] of [["arrow", "#6b7280"], ["arrow-x", "#d97706"]]) {
    const marker = el("marker", { id, viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7,
                                  orient: "auto-start-reverse" });
    marker.appendChild(el("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: color }));
    defs.appendChild(marker);
  }
  svg.appendChild(defs);
  const layer = layers(graph.steps);
  const rows = new Map(), place = new Map();
  const consumers = new Set(graph.steps.flatMap((s) => s.inputs.map((e) => e.from)));
  for (const step of graph.steps) {
    const col = layer.get(step.id), row = rows.get(col) || 0;
    rows.set(col, row + 1);
    place.set(step.id, { x: PAD + col * (BOX_W + GAP_X), y: PAD + row * (BOX_H + GAP_Y) });
  }
  const width = PAD * 2 + (Math.max(...layer.values(), 0) + 1) * (BOX_W + GAP_X) - GAP_X;
  const height = PAD * 2 + Math.max(...rows.values(), 1) * (BOX_H + GAP_Y) - GAP_Y;
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  for (const step of graph.steps) {
    for (const edge of step.inputs) {
      const a = place.get(edge.from), b = place.get(step.id);
      const x1 = a.x + BOX_W, y1 = a.y + BOX_H / 2, x2 = b.x, y2 = b.y + BOX_H / 2, mx = (x1 + x2) / 2;
      // an exchange by key and a broadcast (every record to every kernel) both cross kernels
      const crosses = edge.exchange || edge.broadcast;
      svg.appendChild(el("path", { d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}`,
                                   class: crosses ? "edge exchange" : "edge",
                                   "marker-end": crosses ? "url(#arrow-x)" : "url(#arrow)" }));
      if (crosses) {
        svg.appendChild(el("text", { x: mx, y: (y1 + y2) / 2 - 6, "text-anchor": "middle", class: "exchange-mark" },
                           edge.broadcast ? "\u21c9 to every kernel" : "\u21c4 by key"));
      }
    }
  }
  for (const step of graph.steps) {
    const { x, y } = place.get(step.id);
    const kind = step.source ? "source" : consumers.has(step.id) ? "" : "sink";
    const g = el("g", { class: `box ${kind}`, "data-step": step.id });
    g.appendChild(el("title", {}, `${step.label} — ${step.kind}${step.combiner ? " (combined before the exchange)" : ""}`));
    g.appendChild(el("rect", { x, y, width: BOX_W, height: BOX_H, class: "frame" }));
    g.appendChild(el("text", { x: x + 8, y: y + 17, class: "name" }, clip(step.name, 26)));
    const rates = el("text", { x: x + 8, y: y + 35, class: "dim" }, "-");
    const wm = el("text", { x: x + 8, y: y + 52, class: "dim" }, "");
    const badge = el("g", {});
    g.append(rates, wm, badge);
    svg.appendChild(g);
    dashboard.boxes.set(step.id, { rates, wm, badge, x, y });
  }
  const rowsBody = document.querySelector("#steps tbody");
  rowsBody.replaceChildren();
  for (const step of graph.steps) {
    const row = document.createElement("tr");
    row.dataset.step = step.id;
    cell(row, step.label);
    cell(row, step.kind, "text");
    for (let i = 0; i < 8; i++) cell(row, "-");
    rowsBody.appendChild(row);
  }
}

function clip(text, n) {
  return text.length > n ? text.slice(0, n - 1) + "\u2026" : text;
}

function drawBadge(badge, x, y, share) {
  // a bar of the step's busy / backpressured / idle share at the box's bottom edge
  badge.replaceChildren();
  let at = x + 8;
  const w = BOX_W - 16;
  for (const [name, part] of [["busy", share.busy], ["backpressured", share.backpressured], ["idle", share.idle]]) {
    const width = Math.max(0, Math.min(1, part)) * w;
    badge.appendChild(el("rect", { x: at, y: y + BOX_H - 11, width, height: 6, class: name }));
    at += width;
  }
  badge.appendChild(el("title", {}, share.text));
}

function stepShare(step, r, kernels) {
  // a step: the time in its handler; a source (its time is not measured
  // apart from its chain's): how long the kernels paused it, backpressured
  if (step.source) {
    const bp = Math.max(0, kernels.backpressured);
    return { busy: 0, backpressured: bp, idle: 1 - bp, text: `kernels paused the source (backpressure) ${pct(bp)}` };
  }
  const busy = Math.max(0, r.busy ?? 0);
  return { busy, backpressured: 0, idle: 1 - busy, text: `busy ${pct(busy)} of each kernel's time, idle ${pct(1 - busy)}` };
}

function pct(x) {
  return `${Math.round(100 * Math.max(0, x))}%`;
}

// -- the figures --------------------------------------------------------------------------

function stepRates(now, before) {
  const dt = now.time - before.time, old = new Map(before.steps.map((s) => [s.id, s])), out = new Map();
  for (const step of now.steps) {
    const prev = old.get(step.id);
    const r = (key) => (dt > 0 && prev && step[key] !== null && prev[key] !== null ? (step[key] - prev[key]) / dt : null);
    // busy: the share of one kernel's time spent in the step's handler, averaged over the kernels
    const busy = r("busy");
    out.set(step.id, { in: r("partial_in") ?? r("in"), out: r("out"),
                       busy: busy === null ? null : busy / Math.max(1, now.kernels.length) });
  }
  return out;
}

function kernelShares(now, before) {
  const dt = now.time - before.time, old = new Map(before.kernels.map((k) => [k.kernel, k])), out = new Map();
  for (const k of now.kernels) {
    const prev = old.get(k.kernel);
    const d = (key) => (dt > 0 && prev && k[key] !== null && prev[key] !== null ? (k[key] - prev[key]) / dt : 0);
    out.set(k.kernel, { busy: d("busy"), idle: d("idle"), backpressured: d("backpressured") });
  }
  return out;
}

function update(state) {
  dashboard.states.push(state);
  if (dashboard.states.length > WINDOW) dashboard.states.shift();
  dashboard.updates += 1;
  const before = dashboard.states[0];
  const rates = stepRates(state, before), shares = kernelShares(state, before);
  const mean = { busy: 0, idle: 0, backpressured: 0 };
  for (const s of shares.values()) for (const key in mean) mean[key] += s[key] / shares.size;
  const graph = dashboard.graph, byId = new Map(state.steps.map((s) => [s.id, s]));
  let totalIn = 0, totalOut = 0, lowest = null;
  if (graph) {
    const consumers = new Set(graph.steps.flatMap((s) => s.inputs.map((e) => e.from)));
    for (const step of graph.steps) {
      const figures = byId.get(step.id), r = rates.get(step.id) || {};
      const box = dashboard.boxes.get(step.id);
      if (!figures || !box) continue;
      const input = figures.partial_in ?? figures.in;
      if (step.source) totalIn += r.out || 0;
      if (!consumers.has(step.id)) {
        totalOut += r.in || 0;
        lowest = lowerWatermark(lowest, figures.watermark);
      }
      box.rates.textContent = step.source ? `out ${rate(r.out)}/s \u00b7 ${count(figures.out)}`
        : `in ${rate(r.in)}/s \u00b7 ${count(input)}`;
      box.wm.textContent = figures.watermark === null ? "no watermark yet"
        : `wm lag ${lag(figures.watermark, state.time)}`;
      drawBadge(box.badge, box.x, box.y, stepShare(step, r, mean));
      const row = document.querySelector(`#steps tr[data-step="${step.id}"]`);
      const cells = row.children;
      cells[2].textContent = rate(r.in);
      cells[3].textContent = rate(r.out);
      cells[4].textContent = count(input);
      cells[5].textContent = count(figures.out);
      cells[6].textContent = watermarkText(figures.watermark, state.time);
      cells[7].textContent = lag(figures.watermark, state.time);
      cells[8].textContent = count(figures.late);
      cells[9].textContent = step.source ? "-" : pct(r.busy ?? 0);
    }
  }
  document.getElementById("elapsed").textContent = seconds(state.time - state.started);
  document.getElementById("rate-in").textContent = rate(totalIn);
  document.getElementById("rate-out").textContent = rate(totalOut);
  document.getElementById("watermark").textContent = watermarkText(lowest, state.time);
  document.getElementById("complete").textContent = state.epochs.complete ?? "-";
  drawKernels(state, shares);
  drawEpochs(state.epochs);
}

function drawKernels(state, shares) {
  const body = document.querySelector("#kernels tbody");
  body.replaceChildren();
  for (const k of state.kernels) {
    const row = document.createElement("tr"), share = shares.get(k.kernel);
    cell(row, `kernel ${k.kernel}`);
    const bar = cell(row, "");
    const strip = document.createElement("span");
    strip.className = "share";
    strip.title = `busy ${pct(share.busy)}, backpressured ${pct(share.backpressured)}, idle ${pct(share.idle)}`;
    for (const name of ["busy", "backpressured", "idle"]) {
      const part = document.createElement("i");
      part.className = name;
      part.style.width = `${100 * Math.max(0, Math.min(1, share[name]))}%`;
      strip.appendChild(part);
    }
    bar.appendChild(strip);
    cell(row, k.busy.toFixed(2));
    cell(row, k.idle.toFixed(2));
    cell(row, k.backpressured === null ? "-" : k.backpressured.toFixed(2));
    cell(row, count(k.stalls));
    cell(row, count(k.ring_used_bytes));
    cell(row, count(k.link_sent_bytes));
    body.appendChild(row);
  }
}

function drawEpochs(epochs) {
  const svg = document.getElementById("epochs"), timeline = epochs.timeline;
  svg.replaceChildren();
  if (!timeline.length) {
    svg.setAttribute("height", 0);
    return;
  }
  document.getElementById("epoch-note").textContent =
    `${timeline.length} shown, last complete on every kernel: ${epochs.complete ?? "none yet"}`;
  const W = 12, H = 80, longest = Math.max(...timeline.map((e) => e[2]), 1e-3);
  svg.setAttribute("width", timeline.length * (W + 2) + 80);
  svg.setAttribute("height", H + 20);
  svg.appendChild(el("text", { x: 0, y: 12, "font-size": 11, fill: "#6b7280" }, seconds(longest)));
  timeline.forEach(([epoch, at, secs], i) => {
    const h = Math.max(1, (secs / longest) * H);
    const bar = el("rect", { x: 70 + i * (W + 2), y: H - h + 4, width: W, height: h, class: "epoch-bar" });
    bar.appendChild(el("title", {}, `epoch ${epoch}: ${seconds(secs)}, at ${new Date(at * 1000).toISOString()}`));
    svg.appendChild(bar);
  });
}

// -- wiring -------------------------------------------------------------------------------

async function loadGraph() {
  for (;;) {
    try {
      const response = await fetch("api/graph");
      if (response.ok) return await response.json();
    } catch (e) {
      // not up yet, or gone: try again
    }
    await new Promise((done) => setTimeout(done, 250));
  }
}

function setStatus(text, cls) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = cls;
}

async function main() {
  const graph = await loadGraph();
  dashboard.graph = graph;
  document.getElementById("flow-name").textContent = graph.name;
  document.title = `streamkernel: ${graph.name}`;
  drawGraph(graph);
  const events = new EventSource("api/events");
  events.onopen = () => setStatus("live", "live");
  events.onmessage = (message) => update(JSON.parse(message.data));
  events.addEventListener("end", (message) => {
    dashboard.ended = true;
    const last = JSON.parse(message.data);
    update(last);
    // how it ended: a run that raised or was interrupted said "ended", as one that finished
    if (last.failed) setStatus(`failed: ${last.failed}`, "failed");
    else if (last.stopped) setStatus(`stopped: ${last.stopped}`, "failed");
    else setStatus("ended", "ended");
    events.close();
  });
  events.onerror = () => { if (!dashboard.ended) setStatus("reconnecting", ""); };
}

main();
