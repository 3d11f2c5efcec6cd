// Models: every model and variant with its card from /v1/models (a classifier's top-1, a
// detector's mAP@0.5), raw throughput per batch
// size as a plot, the registry's champion and challenger from /admin/rollouts, and every
// registered version from /admin/versions.
"use strict";
(() => {
  const C = window.Console;
  const root = document.getElementById("models");
  const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2"];

  function fact(name, value) {
    return [C.el("dt", {}, name), C.el("dd", {}, value ?? "–")];
  }

  function throughput(container, variants) {
    const runs = {};
    for (const v of variants) for (const p of v.performance || []) {
      (runs[`${p.variant} · ${p.backend}`] ||= {})[p.batch_size] = p.images_per_s;
    }
    const sizes = [...new Set(Object.values(runs).flatMap((r) => Object.keys(r).map(Number)))].sort((a, b) => a - b);
    if (!sizes.length) {
      container.replaceChildren(C.el("p", { class: "hint" }, "No throughput figures in this card."));
      return;
    }
    const names = Object.keys(runs);
    C.chart(container, names.map((n, i) => ({ label: n, stroke: COLOURS[i % COLOURS.length], width: 2, points: { show: true } })), {
      time: false,
      height: 240,
      scales: { x: { time: false, distr: 3, log: 2 }, y: { range: (u, min, max) => [0, max * 1.1] } },
      axes: [{ label: "batch size" }, { label: "images/s", size: 70 }],
      data: [sizes, ...names.map((n) => sizes.map((s) => runs[n][s] ?? null))],
    });
  }

  async function show() {
    const answer = await C.api("/v1/models");
    if (!answer.ok) {
      root.replaceChildren(C.el("p", { class: "error" }, C.message(answer)));
      return;
    }
    const sections = [];
    for (const m of answer.data.models) {
      const state = await C.api(`/admin/rollouts?model=${encodeURIComponent(m.model)}`);
      const rollout = state.ok ? state.data.rollout : null;
      const registered = await C.api(`/admin/versions?model=${encodeURIComponent(m.model)}`);
      const versions = registered.ok ? registered.data.versions : [];
      const e = m.evaluation || {};
      const f = m.figures || {};
      // A detector's quality is its mAP@0.5 (boxes and labels), a classifier's its top-1.
      const detector = m.task === "detection";
      const quality = detector ? ["mAP@0.5", "map50"] : ["Top-1", "top1"];
      const plot = C.el("div", { class: "plot", id: `throughput-${m.model}` });
      const section = C.el("section", { class: "card model", "data-model": m.model },
        C.el("h2", {}, m.model),
        C.el("p", {}, m.summary || ""),
        C.el("dl", { class: "facts" },
          fact("Task", m.task),
          fact("Labels", `${m.labels.length} (${m.labels.slice(0, 12).join(", ")}${m.labels.length > 12 ? ", …" : ""})`),
          fact("Input", `${m.input.shape.join("×")} ${m.input.color_mode}`),
          detector
            ? fact("Evaluated on", e.samples ? `${e.samples} images, ${e.objects ?? "?"} objects: ${e.data}` : "–")
            : fact("Evaluated on", e.samples ? `${e.samples} images: ${e.data}` : "–"),
          detector
            ? fact("FP32 mAP@0.5", C.percent(e.fp32_map50))
            : fact("INT8–FP32 agreement", C.percent(e.int8_fp32_agreement)),
          fact("Measured on", f.measured_on),
          fact("Serving on", f.serving_on),
          fact("Champion (registry)", m.registry ? `v${m.registry.version ?? "?"}` : `v${m.variants[0]?.version ?? "?"} (repository)`),
          fact("Challenger", rollout ? `v${rollout.challenger} (canary ${C.percent(rollout.canary_share)}, shadow ${C.percent(rollout.shadow_share)})` : "none"),
        ),
        f.note ? C.el("p", { class: "notice" }, f.note) : null,
        C.el("div", { class: "table-wrap" }, C.el("table", {},
          C.el("thead", {}, C.el("tr", {}, ["Variant", "Version", "Backend", "Precision", quality[0], "Size", "Max batch", "Runs in"].map((h) => C.el("th", { scope: "col" }, h)))),
          C.el("tbody", {}, m.variants.map((v) => C.el("tr", {},
            C.el("td", {}, v.variant), C.el("td", { class: "num" }, `v${v.version}`), C.el("td", {}, v.backend),
            C.el("td", {}, v.precision), C.el("td", { class: "num quality", "data-measure": quality[1] }, C.percent(v[quality[1]])),
            C.el("td", { class: "num" }, C.megabytes(v.bytes)), C.el("td", { class: "num" }, v.max_batch_size),
            C.el("td", { class: "wrap" }, v.runs_in)))),
        )),
        Object.keys(m.not_offered || {}).length
          ? C.el("ul", { class: "hint" }, Object.entries(m.not_offered).map(([v, why]) => C.el("li", {}, `${v.toUpperCase()} not offered: ${why}`)))
          : null,
        C.el("figure", { class: "chart" }, C.el("figcaption", {}, "Raw throughput per batch size (model card)"), plot),
        versions.length
          ? C.el("div", { class: "table-wrap" }, C.el("table", { class: "versions" },
            C.el("caption", {}, "Registry versions"),
            C.el("thead", {}, C.el("tr", {}, ["Version", "Aliases", "Variants", "Registered", "How it was built"].map((h) => C.el("th", { scope: "col" }, h)))),
            C.el("tbody", {}, versions.slice().reverse().map((v) => C.el("tr", { "data-version": v.version },
              C.el("td", { class: "num" }, `v${v.version}`), C.el("td", {}, v.aliases.join(", ") || "–"),
              C.el("td", {}, v.variants.join(", ")), C.el("td", {}, v.created),
              C.el("td", { class: "wrap" }, v.description || "–"))))))
          : null,
      );
      sections.push([section, plot, m.variants]);
    }
    root.replaceChildren(...sections.map(([s]) => s));
    for (const [, plot, variants] of sections) throughput(plot, variants);
  }

  C.poll(show);
})();
