// Monitoring: drift of the latest checked window against the reference (GET /v1/drift), the
// score of each check over time (GET /v1/drift/history) and a link to Evidently's report of the
// latest check (GET /v1/drift/report). The history is read first: it is empty (200) until the
// service's first check, when /v1/drift would answer 409, so the page says "no check yet"
// without a refused request. A 404 from the history means this service has no drift endpoints.
"use strict";
(() => {
  const C = window.Console;
  const missing = document.getElementById("drift-missing");
  const pending = document.getElementById("drift-pending");
  const panel = document.getElementById("drift");
  let plot = null;

  function shares(reference, current, keys) {
    return keys.map((k) => ({ name: k, values: [reference[k] ?? 0, current[k] ?? 0] }));
  }

  function confidenceRows(reference, current) {
    const edges = reference.edges || current.edges || [];
    return edges.slice(0, -1).map((lo, i) => ({
      name: `${Number(lo).toFixed(2)}–${Number(edges[i + 1]).toFixed(2)}`,
      values: [(reference.shares || [])[i] ?? 0, (current.shares || [])[i] ?? 0],
    }));
  }

  // Labels in the order a person reads them: numbers by value, then the others by name.
  function ordered(keys) {
    const numeric = (k) => k.trim() !== "" && Number.isFinite(Number(k));
    return [...keys].sort((a, b) => (numeric(a) && numeric(b) ? Number(a) - Number(b) : a.localeCompare(b)));
  }

  function show(which) {
    missing.hidden = which !== "missing";
    pending.hidden = which !== "pending";
    panel.hidden = which !== "drift";
  }

  function showHistory(checks) {
    const data = [checks.map((h) => (typeof h.at === "number" ? h.at : Date.parse(h.at) / 1000)), checks.map((h) => h.score)];
    if (!plot) {
      // The score axis always shows 0 to past 1 (the drift line).
      const scales = { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(2, max * 1.1)] } };
      plot = C.chart(document.getElementById("plot-history"),
        [{ label: "score (1 or more: drift)", stroke: "#7c3aed", width: 2, points: { show: true } }], { data, scales });
    } else plot.setData(data);
    // Checks less than ten minutes apart get five minutes either side: a lone point reads as a
    // moment, not as a span of years (uPlot's own padding of a single time).
    const [first, last] = [data[0][0], data[0][data[0].length - 1]];
    if (last - first < 600) plot.setScale("x", { min: first - 300, max: last + 300 });
    C.set("checks", `${checks.length} check${checks.length === 1 ? "" : "s"}, ${checks.filter((h) => h.drifted).length} drifted`);
  }

  function showLatest(d, model) {
    C.set("drifted", d.drifted ? "drifted" : "no drift");
    document.getElementById("drifted").className = `value ${d.drifted ? "bad" : "ok"}`;
    C.set("score", C.fixed(d.score, 3));
    C.set("window", d.window ? `${C.when(d.window.start)} → ${C.when(d.window.end)} (${d.window.count})` : "–");
    C.set("drift-version", d.version ? `v${d.version}` : "–");
    C.set("computed", d.computed_at ? `computed ${C.when(d.computed_at)}` : "");
    const ref = d.reference || {}, cur = d.current || {};
    const classes = ordered(new Set([...Object.keys(ref.classes || {}), ...Object.keys(cur.classes || {})]));
    C.bars(document.getElementById("classes"), shares(ref.classes || {}, cur.classes || {}, classes), ["reference", "current"]);
    C.bars(document.getElementById("confidence"), confidenceRows(ref.confidence || {}, cur.confidence || {}), ["reference", "current"]);
    document.querySelector("#features tbody").replaceChildren(...(d.features || []).map((f) => C.el("tr", { "data-feature": f.name },
      C.el("td", {}, f.name), C.el("td", {}, f.test), C.el("td", { class: "num" }, C.fixed(f.statistic, 3)),
      C.el("td", { class: "num" }, C.fixed(f.threshold, 3)), C.el("td", { class: f.drifted ? "bad" : "ok" }, f.drifted ? "yes" : "no"))));
    document.getElementById("report").href = `/v1/drift/report?model=${model}`;
  }

  async function load() {
    const model = encodeURIComponent(C.selectedModel());
    const history = await C.api(`/v1/drift/history?model=${model}`);
    if (history.status === 404) {
      show("missing");
      if (history.data && history.data.message) missing.textContent = `Drift monitoring is not available: ${history.data.message}`;
      return;
    }
    if (!history.ok) { C.status(C.message(history)); return; }
    if (!history.data.length) { show("pending"); return; }
    const drift = await C.api(`/v1/drift?model=${model}`);
    if (!drift.ok) { C.status(C.message(drift)); return; }
    show("drift");
    showLatest(drift.data, model);
    showHistory(history.data);
  }

  document.getElementById("model").addEventListener("change", load);
  C.poll(load, 15000);
})();
