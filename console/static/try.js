// Try it: each dropped or chosen image goes to POST /v1/classify (its limits, its decoder),
// once per chosen variant; "side by side" sends the same bytes to every offered variant.
"use strict";
(() => {
  const C = window.Console;
  const modelSelect = document.getElementById("model");
  const variantSelect = document.getElementById("variant");
  const results = document.getElementById("results");
  const drop = document.getElementById("drop");
  const input = document.getElementById("files");
  let catalog = [];
  let count = 0;

  function fillVariants() {
    const model = catalog.find((m) => m.model === modelSelect.value);
    const offered = model ? model.variants.map((v) => v.variant) : [];
    const options = offered.length > 1 ? [["all", `Side by side (${offered.join(", ").toUpperCase()})`]] : [];
    variantSelect.replaceChildren(
      ...[...options, ...offered.map((v) => [v, v.toUpperCase()])].map(([value, text]) => C.el("option", { value }, text)),
    );
  }

  async function load() {
    const answer = await C.api("/v1/models");
    if (!answer.ok) {
      C.status(`cannot list the models: ${C.message(answer)}`);
      return;
    }
    catalog = answer.data.models;
    modelSelect.replaceChildren(...catalog.map((m) => C.el("option", { value: m.model }, m.model)));
    modelSelect.value = answer.data.default_model;
    fillVariants();
  }

  function topK(predictions) {
    return C.el("ol", { class: "topk" }, predictions.map((p) => {
      const bar = C.el("span", { class: "bar s0" });
      bar.style.width = `${Math.max(0, Math.min(1, p.score)) * 100}%`;
      return C.el("li", {},
        C.el("span", { class: "bar-name" }, p.label),
        C.el("span", { class: "bar-track" }, bar),
        C.el("span", { class: "bar-value" }, C.percent(p.score)));
    }));
  }

  async function classify(file, bytes, variant, slot) {
    const query = new URLSearchParams({ model: modelSelect.value, variant });
    const topk = document.getElementById("top-k").value;
    const version = document.getElementById("version").value;
    if (topk) query.set("top_k", topk);
    if (version) query.set("version", version);
    const started = performance.now();
    let answer;
    try {
      answer = await C.api(`/v1/classify?${query}`, {
        method: "POST", body: bytes, headers: { "Content-Type": file.type || "application/octet-stream" },
      });
    } catch (error) {
      slot.replaceChildren(C.el("p", { class: "error" }, `request failed: ${error}`));
      return;
    }
    const ms = performance.now() - started;
    if (!answer.ok) {
      slot.replaceChildren(C.el("h3", {}, variant.toUpperCase()), C.el("p", { class: "error", role: "alert" }, C.message(answer)));
      return;
    }
    const d = answer.data;
    const best = d.predictions[0];
    slot.replaceChildren(
      C.el("h3", {}, `${d.variant.toUpperCase()} · ${d.backend} · v${d.model_version}`),
      C.el("p", { class: "answer" }, "Label ", C.el("strong", { class: "top1", "data-label": best.label }, best.label),
        ` in ${C.fixed(ms, 1)} ms (round trip)`),
      topK(d.predictions),
    );
  }

  async function handle(files) {
    const variants = variantSelect.value === "all"
      ? [...variantSelect.options].map((o) => o.value).filter((v) => v !== "all")
      : [variantSelect.value];
    for (const file of files) {
      count += 1;
      const bytes = await file.arrayBuffer();
      const preview = C.el("img", { src: URL.createObjectURL(file), alt: `uploaded image ${file.name}`, width: 112, height: 112 });
      const slots = variants.map((v) => C.el("div", { class: "answer-slot", "data-variant": v }, C.el("p", { class: "hint" }, `${v.toUpperCase()}…`)));
      const card = C.el("article", { class: "card result", "data-file": file.name },
        C.el("div", { class: "preview" }, preview, C.el("p", { class: "hint" }, `${file.name} · ${(file.size / 1024).toFixed(1)} KiB`)),
        C.el("div", { class: "answers" }, slots));
      results.prepend(card);
      await Promise.all(variants.map((v, i) => classify(file, bytes, v, slots[i])));
    }
    C.status(`${count} image(s) classified`);
  }

  modelSelect.addEventListener("change", fillVariants);
  input.addEventListener("change", () => { handle([...input.files]); input.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    handle([...e.dataTransfer.files]);
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
  });
  C.poll(load);
})();
