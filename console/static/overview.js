// Overview: live figures from the service's own /metrics (read every 2 s; rates and
// quantiles from the differences between reads, as Prometheus' rate() would), readiness
// from /readyz, the served variants from /v1/models and versions from /admin/rollouts.
"use strict";
(() => {
  const C = window.Console;
  const PERIOD_MS = 2000;
  const KEEP_S = 300;
  const reads = []; // {t, samples}
  const history = { t: [], rps: [], p50: [], p99: [], errors: [], sheds: [] };
  let variants = [];
  let versions = {}; // model -> {champion, challenger}
  let ready = null;

  const plots = {
    rps: C.chart(document.getElementById("plot-rps"), [{ label: "req/s", stroke: "#2563eb", width: 2 }]),
    latency: C.chart(document.getElementById("plot-latency"), [
      { label: "p50 ms", stroke: "#16a34a", width: 2 },
      { label: "p99 ms", stroke: "#dc2626", width: 2 },
    ]),
    errors: C.chart(document.getElementById("plot-errors"), [
      { label: "errors/s", stroke: "#dc2626", width: 2 },
      { label: "sheds/s", stroke: "#d97706", width: 2 },
    ]),
  };

  const requests = "imgserve_requests_total";
  const duration = "imgserve_request_duration_ms";
  const isError = (l) => l.outcome === "error" || l.outcome === "timeout";
  const isShed = (l) => l.outcome === "shed";

  function back(seconds) {
    // The oldest read no older than `seconds` before the newest one.
    const newest = reads[reads.length - 1];
    return reads.find((r) => newest.t - r.t <= seconds) || reads[0];
  }

  function rate(from, to, name, where) {
    const dt = to.t - from.t;
    if (dt <= 0) return null;
    return Math.max(0, C.total(to.samples, name, where) - C.total(from.samples, name, where)) / dt;
  }

  function latency(from, to, q) {
    const now = C.buckets(to.samples, duration);
    const then = C.buckets(from.samples, duration);
    const delta = {};
    for (const le of Object.keys(now)) delta[le] = now[le] - (then[le] || 0);
    return C.quantile(delta, q);
  }

  function since(seconds) {
    const date = new Date(seconds * 1000);
    const today = date.toDateString() === new Date().toDateString();
    const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return today ? time : `${date.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
  }

  // Requests/s each loaded version answered (imgserve_version_requests_total): during a
  // rollout, the champion's and the challenger's shares as they are served.
  function byVersion(previous, newest, mine) {
    const name = "imgserve_version_requests_total";
    const versions = [...new Set(newest.samples.filter((s) => s.name === name && mine(s.labels)).map((s) => s.labels.version))];
    versions.sort((a, b) => Number(a) - Number(b));
    return versions.map((v) => `v${v} ${C.fixed(rate(previous, newest, name, (l) => mine(l) && l.version === v), 1)}`).join(" · ") || "–";
  }

  function variantRows(newest, previous) {
    const tbody = document.querySelector("#variants tbody");
    tbody.replaceChildren(
      ...variants.map((v) => {
        const mine = (l) => l.model === v.model && l.variant === v.variant;
        const inFlight = C.total(newest.samples, "imgserve_in_flight_requests", mine);
        const known = versions[v.model] || {};
        return C.el("tr", {},
          C.el("td", {}, v.model), C.el("td", {}, v.variant), C.el("td", {}, v.backend),
          C.el("td", { class: "num" }, `v${known.champion ?? v.version}`),
          C.el("td", { class: "num" }, known.challenger ? `v${known.challenger}` : "–"),
          C.el("td", { class: ready ? "ok" : "bad" }, ready ? "ready" : "not ready"),
          C.el("td", { class: "num" }, previous ? C.fixed(rate(previous, newest, requests, mine), 1) : "–"),
          C.el("td", { class: "num" }, previous ? byVersion(previous, newest, mine) : "–"),
          C.el("td", { class: "num" }, C.fixed(inFlight, 0)));
      }),
    );
  }

  function render() {
    if (reads.length < 1) return;
    const newest = reads[reads.length - 1];
    const started = C.total(newest.samples, "imgserve_started_seconds");
    C.set("up-since", started ? since(started) : "–");
    C.set("ready", ready === null ? "–" : ready ? "ready" : "not ready");
    document.getElementById("ready").className = `value ${ready ? "ok" : "bad"}`;
    const previous = reads.length > 1 ? reads[reads.length - 2] : null;
    variantRows(newest, previous);
    if (!previous) return;
    const minute = back(60);
    const five = back(KEEP_S);
    C.set("rps", C.fixed(rate(previous, newest, requests), 1));
    C.set("latency", `${C.fixed(latency(minute, newest, 0.5), 1)} · ${C.fixed(latency(minute, newest, 0.99), 1)} ms`);
    const errors = Math.round((rate(five, newest, requests, isError) || 0) * (newest.t - five.t));
    const sheds = Math.round((rate(five, newest, requests, isShed) || 0) * (newest.t - five.t));
    C.set("errors", `${errors} · ${sheds}`);

    history.t.push(newest.t);
    history.rps.push(rate(previous, newest, requests));
    history.p50.push(latency(previous, newest, 0.5));
    history.p99.push(latency(previous, newest, 0.99));
    history.errors.push(rate(previous, newest, requests, isError));
    history.sheds.push(rate(previous, newest, requests, isShed));
    while (history.t.length && newest.t - history.t[0] > KEEP_S) for (const k of Object.keys(history)) history[k].shift();
    plots.rps.setData([history.t, history.rps]);
    plots.latency.setData([history.t, history.p50, history.p99]);
    plots.errors.setData([history.t, history.errors, history.sheds]);
    for (const plot of Object.values(plots)) plot.setScale("x", { min: newest.t - KEEP_S, max: newest.t });
  }

  async function describe() {
    const models = await C.api("/v1/models");
    if (!models.ok) return;
    variants = models.data.models.flatMap((m) => m.variants.map((v) => ({ model: m.model, ...v })));
    for (const m of models.data.models) {
      const state = await C.api(`/admin/rollouts?model=${encodeURIComponent(m.model)}`);
      const champion = m.variants[0] ? m.variants[0].version : null;
      versions[m.model] = {
        champion,
        challenger: state.ok && state.data.rollout ? state.data.rollout.challenger : null,
      };
    }
  }

  async function tick() {
    try {
      const [metrics, readyz] = await Promise.all([
        fetch("/metrics", { credentials: "same-origin" }),
        fetch("/readyz", { credentials: "same-origin" }),
      ]);
      ready = readyz.ok;
      reads.push({ t: Date.now() / 1000, samples: C.parseMetrics(await metrics.text()) });
      while (reads.length > 2 && reads[reads.length - 1].t - reads[0].t > KEEP_S) reads.shift();
      render();
      C.status(`updated ${new Date().toLocaleTimeString()}`);
    } catch (error) {
      C.status(`cannot reach the service: ${error}`);
    }
  }

  C.poll(async () => { await describe(); await tick(); });
  setInterval(tick, PERIOD_MS);
  setInterval(() => C.poll(describe), 15000);
})();
