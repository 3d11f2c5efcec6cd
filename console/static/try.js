// Try it: each dropped or chosen image goes to its model's task route (POST /v1/classify or
// POST /v1/detect: their limits, their decoder), once per chosen variant; "side by side" sends
// the same bytes to every offered variant. A detector's boxes are drawn over the image in an
// SVG whose viewBox is the image's own pixel size, so the API's pixel coordinates scale with
// the displayed image.
"use strict";
(() => {
  const C = window.Console;
  const modelSelect = document.getElementById("model");
  const variantSelect = document.getElementById("variant");
  const results = document.getElementById("results");
  const drop = document.getElementById("drop");
  const input = document.getElementById("files");
  const topKField = document.getElementById("top-k").closest(".field");
  const SVG = "http://www.w3.org/2000/svg";
  // task -> its one-image route (runners/tasks: every task's route and answer key)
  const ROUTES = { classification: "/v1/classify", detection: "/v1/detect" };
  let catalog = [];
  let count = 0;

  function chosenModel() {
    return catalog.find((m) => m.model === modelSelect.value);
  }

  function isDetector(model) {
    return Boolean(model && model.task === "detection");
  }

  function fillVariants() {
    const model = chosenModel();
    topKField.hidden = isDetector(model);
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

  function svg(tag, attrs = {}, text = null) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    if (text !== null) node.textContent = text;
    return node;
  }

  // The image with one box per detection, in the image's pixels: the SVG's viewBox is the
  // image's natural size and it covers the displayed image exactly, so the browser scales both.
  function drawn(url, size, detections) {
    const [width, height] = size;
    const font = width / 26; // about 14 px on screen at the drawing's 360 px width
    const overlay = svg("svg", {
      class: "boxes", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none",
      "data-width": width, "data-height": height, role: "img",
      "aria-label": `${detections.length} detection(s)`,
    });
    detections.forEach((d, i) => {
      const [x1, y1, x2, y2] = d.box;
      const group = svg("g", { class: `detection s${i % 6}`, "data-label": d.label, "data-score": d.score });
      group.append(
        svg("rect", { class: "box", x: x1, y: y1, width: Math.max(0, x2 - x1), height: Math.max(0, y2 - y1), "vector-effect": "non-scaling-stroke" }),
        svg("text", { x: x1, y: y1 > font ? y1 - font * 0.25 : y1 + font, "font-size": font }, `${d.label} ${C.percent(d.score)}`),
      );
      overlay.append(group);
    });
    return C.el("div", { class: "detected" }, C.el("img", { src: url, alt: "the uploaded image with its boxes" }), overlay);
  }

  function detectionList(detections) {
    return C.el("ol", { class: "detections" }, detections.map((d) =>
      C.el("li", {}, C.el("strong", {}, d.label), ` ${C.percent(d.score)} at [${d.box.map((v) => C.fixed(v, 1)).join(", ")}]`)));
  }

  async function infer(file, bytes, variant, slot, image) {
    const model = chosenModel();
    const detector = isDetector(model);
    const query = new URLSearchParams({ model: modelSelect.value, variant });
    const topk = document.getElementById("top-k").value;
    const version = document.getElementById("version").value;
    if (topk && !detector) query.set("top_k", topk);
    if (version) query.set("version", version);
    const route = ROUTES[model?.task] || ROUTES.classification;
    const started = performance.now();
    let answer;
    try {
      answer = await C.api(`${route}?${query}`, {
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
    if (detector) {
      const heading = C.el("h3", {}, `${d.variant.toUpperCase()} · ${d.backend} · v${d.model_version}`);
      const line = C.el("p", { class: "answer" }, C.el("strong", { class: "count", "data-count": d.detections.length },
        String(d.detections.length)), ` box(es) in ${C.fixed(ms, 1)} ms (round trip)`);
      const size = await image.size;
      const picture = size
        ? drawn(image.url, size, d.detections)
        : C.el("p", { class: "error" }, "the browser cannot show this image to draw its boxes on");
      slot.replaceChildren(heading, line, picture, detectionList(d.detections));
      return;
    }
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
      const url = URL.createObjectURL(file);
      const preview = C.el("img", { src: url, alt: `uploaded image ${file.name}`, width: 112, height: 112 });
      // The image's own pixel size (null when the browser cannot decode it): the boxes' frame.
      const image = { url, size: preview.decode().then(() => [preview.naturalWidth, preview.naturalHeight], () => null) };
      const slots = variants.map((v) => C.el("div", { class: "answer-slot", "data-variant": v }, C.el("p", { class: "hint" }, `${v.toUpperCase()}…`)));
      const card = C.el("article", { class: "card result", "data-file": file.name },
        C.el("div", { class: "preview" }, preview, C.el("p", { class: "hint" }, `${file.name} · ${(file.size / 1024).toFixed(1)} KiB`)),
        C.el("div", { class: "answers" }, slots));
      results.prepend(card);
      await Promise.all(variants.map((v, i) => infer(file, bytes, v, slots[i], image)));
    }
    C.status(`${count} image(s) answered`);
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
