// Monitoring: drift of the current window against the reference (GET /v1/drift), its score
// over time (GET /v1/drift/history) and a link to Evidently's report (GET /v1/drift/report).
// A 404 from /v1/drift means this service has no drift monitoring: the page says so.
"use strict";
(() => {
  const C = window.Console;
  const missing = document.getElementById("drift-missing");
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

  async function load() {
    const model = encodeURIComponent(C.selectedModel());
    const drift = await C.api(`/v1/drift?model=${model}`);
    if (drift.status === 404) {
      missing.hidden = false;
      panel.hidden = true;
      if (drift.data && drift.data.message) missing.textContent = `Drift monitoring is not available: ${drift.data.message}`;
      return;
    }
    missing.hidden = true;
    panel.hidden = false;
    if (!drift.ok) {
      C.status(C.message(drift));
      return;
    }
    const d = drift.data;
    C.set("drifted", d.drifted ? "drifted" : "no drift");
    document.getElementById("drifted").className = `value ${d.drifted ? "bad" : "ok"}`;
    C.set("score", C.fixed(d.score, 3));
    C.set("window", d.window ? `${C.when(d.window.start)} → ${C.when(d.window.end)} (${d.window.count})` : "–");
    C.set("drift-version", d.version ? `v${d.version}` : "–");
    C.set("computed", d.computed_at ? `computed ${C.when(d.computed_at)}` : "");
    const ref = d.reference || {}, cur = d.current || {};
    const classes = [...new Set([...Object.keys(ref.classes || {}), ...Object.keys(cur.classes || {})])].sort();
    C.bars(document.getElementById("classes"), shares(ref.classes || {}, cur.classes || {}, classes), ["reference", "current"]);
    C.bars(document.getElementById("confidence"), confidenceRows(ref.confidence || {}, cur.confidence || {}), ["reference", "current"]);
    document.querySelector("#features tbody").replaceChildren(...(d.features || []).map((f) => C.el("tr", {},
      C.el("td", {}, f.name), C.el("td", {}, f.test), C.el("td", { class: "num" }, C.fixed(f.statistic, 3)),
      C.el("td", { class: "num" }, C.fixed(f.threshold, 3)), C.el("td", { class: f.drifted ? "bad" : "ok" }, f.drifted ? "yes" : "no"))));
    document.getElementById("report").href = `/v1/drift/report?model=${model}`;

    const history = await C.api(`/v1/drift/history?model=${model}`);
    if (history.ok && Array.isArray(history.data)) {
      const points = history.data.map((h) => [typeof h.at === "number" ? h.at : Date.parse(h.at) / 1000, h.score]);
      const data = [points.map((p) => p[0]), points.map((p) => p[1])];
      if (!plot) plot = C.chart(document.getElementById("plot-history"), [{ label: "score", stroke: "#7c3aed", width: 2, points: { show: true } }], { data });
      else plot.setData(data);
    }
  }

  document.getElementById("model").addEventListener("change", load);
  C.poll(load, 15000);
})();
