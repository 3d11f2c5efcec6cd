// Shared by every console page: the API client (session cookie + CSRF header), DOM helpers,
// the Prometheus text parser and the chart helper. No framework; no inline script or style.
"use strict";

window.Console = (() => {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : null;
  const loggedIn = document.body.dataset.loggedIn === "yes";

  // One call of the service's API; resolves to {status, ok, data} and never throws on a
  // 4xx/5xx answer (the page shows its message), only on a network failure.
  async function api(path, options = {}) {
    const method = options.method || "GET";
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    let body = options.body;
    if (csrf && method !== "GET") headers["X-CSRF-Token"] = csrf;
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.json);
    }
    const response = await fetch(path, { method, headers, body, credentials: "same-origin" });
    const type = response.headers.get("content-type") || "";
    const data = type.includes("json") ? await response.json() : await response.text();
    return { status: response.status, ok: response.ok, data };
  }

  // Run `work` (an async function) now, and every `period_ms` if given; a network failure
  // (the service restarting, a navigation cancelling the request) is shown, not thrown.
  function poll(work, period_ms) {
    const run = () => work().catch((error) => status(`cannot reach the service: ${error.message}`));
    run();
    if (period_ms) setInterval(run, period_ms);
  }

  function message(answer) {
    if (answer.data && typeof answer.data === "object" && answer.data.message) {
      return `${answer.status}: ${answer.data.message}`;
    }
    return `${answer.status}: ${String(answer.data).slice(0, 200)}`;
  }

  // el("td", {class: "num"}, "text", child...)
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function set(id, text) {
    const node = document.getElementById(id);
    if (node && node.textContent !== String(text)) node.textContent = text;
  }

  function status(text) {
    set("status", text);
  }

  // Prometheus text format -> [{name, labels, value}] (comments and blank lines skipped).
  function parseMetrics(text) {
    const samples = [];
    const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/;
    const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    for (const raw of text.split("\n")) {
      if (!raw || raw.startsWith("#")) continue;
      const found = line.exec(raw);
      if (!found) continue;
      const labels = {};
      if (found[3]) for (const m of found[3].matchAll(label)) labels[m[1]] = m[2].replace(/\\(.)/g, "$1");
      samples.push({ name: found[1], labels, value: Number(found[4]) });
    }
    return samples;
  }

  function total(samples, name, where = () => true) {
    let sum = 0;
    for (const s of samples) if (s.name === name && where(s.labels)) sum += s.value;
    return sum;
  }

  // Cumulative histogram buckets {le: count} -> the q-quantile, linear within a bucket
  // (what PromQL's histogram_quantile does).
  function quantile(buckets, q) {
    const edges = Object.keys(buckets).map(Number).sort((a, b) => a - b);
    const count = buckets[Infinity] ?? buckets["+Inf"] ?? (edges.length ? buckets[edges[edges.length - 1]] : 0);
    if (!count) return null;
    const rank = q * count;
    let lower = 0, below = 0;
    for (const edge of edges) {
      const cumulative = buckets[edge];
      if (cumulative >= rank) {
        if (!Number.isFinite(edge)) return lower;
        const inBucket = cumulative - below;
        return inBucket ? lower + (edge - lower) * ((rank - below) / inBucket) : edge;
      }
      lower = edge; below = cumulative;
    }
    return lower;
  }

  function buckets(samples, name, where = () => true) {
    const found = {};
    for (const s of samples) {
      if (s.name !== `${name}_bucket` || !where(s.labels)) continue;
      const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
      found[le] = (found[le] || 0) + s.value;
    }
    return found;
  }

  function fixed(value, digits = 1) {
    return value === null || value === undefined || Number.isNaN(value) ? "–" : Number(value).toFixed(digits);
  }

  function percent(value) {
    return value === null || value === undefined ? "–" : `${(100 * value).toFixed(1)} %`;
  }

  function megabytes(bytes) {
    return bytes ? `${(bytes / 1e6).toFixed(2)} MB` : "–";
  }

  // Unix seconds or an ISO 8601 string -> local date and time.
  function when(at) {
    if (!at) return "–";
    const date = typeof at === "number" ? new Date(at * 1000) : new Date(at);
    if (Number.isNaN(date.getTime())) return String(at);
    return date.toLocaleString([], { dateStyle: "short", timeStyle: "medium" });
  }

  // A uPlot chart that fills its container's width at a fixed height (no layout jump).
  function chart(container, series, options = {}) {
    const width = () => Math.max(240, container.clientWidth - 8);
    const plot = new uPlot(
      {
        width: width(),
        height: options.height || 200,
        series: [options.x || {}, ...series],
        axes: options.axes || [{}, {}],
        scales: options.scales || { x: { time: options.time !== false } },
        legend: { live: false },
        cursor: { drag: { x: false, y: false } },
      },
      options.data || [[], ...series.map(() => [])],
      container,
    );
    new ResizeObserver(() => plot.setSize({ width: width(), height: options.height || 200 })).observe(container);
    return plot;
  }

  // Horizontal bars: [{name, values: [a, b]}] with one class per series (CSS colours them).
  function bars(container, rows, seriesNames) {
    container.replaceChildren(
      el("div", { class: "bar-legend" }, seriesNames.map((n, i) => el("span", { class: `key s${i}` }, n))),
      ...rows.map((row) =>
        el("div", { class: "bar-row" },
          el("span", { class: "bar-name" }, row.name),
          el("span", { class: "bar-track" }, row.values.map((v, i) => {
            const bar = el("span", { class: `bar s${i}`, title: `${seriesNames[i]}: ${percent(v)}` });
            bar.style.width = `${Math.max(0, Math.min(1, v || 0)) * 100}%`;
            return bar;
          })),
          el("span", { class: "bar-value" }, row.values.map((v) => percent(v)).join(" · ")),
        ),
      ),
    );
  }

  function selectedModel() {
    const select = document.getElementById("model");
    return select && select.value ? select.value : (document.body.dataset.models || "").split(",")[0];
  }

  return { api, poll, message, el, set, status, parseMetrics, total, quantile, buckets, fixed, percent,
    megabytes, when, chart, bars, csrf, loggedIn, selectedModel };
})();
