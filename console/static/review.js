// Review: the queue from GET /admin/review as a grid; one click or one key labels
// (POST /admin/review/{id}/label) or discards an item; the export is GET /admin/review/export.
"use strict";
(() => {
  const C = window.Console;
  const grid = document.getElementById("queue");
  if (!grid) return; // not logged in: the page says so
  const modelSelect = document.getElementById("model");
  let labels = [];
  let waiting = 0;
  let decided = 0;

  function progress() {
    const all = waiting + decided;
    const bar = document.getElementById("progress");
    bar.max = Math.max(1, all);
    bar.value = decided;
    C.set("progress-text", `${decided} of ${all} decided, ${waiting} waiting`);
  }

  async function decide(card, label) {
    const id = card.dataset.id;
    const path = label === null ? `/admin/review/${id}/discard` : `/admin/review/${id}/label`;
    card.setAttribute("aria-busy", "true");
    const answer = await C.api(path, { method: "POST", json: label === null ? {} : { label } });
    card.removeAttribute("aria-busy");
    if (!answer.ok) {
      card.querySelector(".message").textContent = C.message(answer);
      return;
    }
    card.classList.add("done");
    card.dataset.decided = label === null ? "discarded" : label;
    card.querySelector(".message").textContent = label === null ? "discarded" : `labelled ${label}`;
    for (const b of card.querySelectorAll("button")) b.disabled = true;
    waiting -= 1;
    decided += 1;
    progress();
    const next = card.nextElementSibling;
    if (next) next.focus();
  }

  function item(entry) {
    const card = C.el("article", {
      class: "card review-item", role: "listitem", tabindex: 0, "data-id": entry.id,
      "aria-label": `prediction ${entry.id}: the model guessed ${entry.guess} at ${C.percent(entry.score)}`,
    },
    C.el("img", { src: entry.image, alt: `queued image ${entry.id}`, width: 96, height: 96, loading: "lazy" }),
    C.el("p", {}, "Guess ", C.el("strong", {}, entry.guess), ` (${C.percent(entry.score)}) · ${entry.variant} v${entry.version}`),
    entry.why ? C.el("p", { class: "hint why" }, entry.why) : null,
    C.el("div", { class: "label-buttons" }, labels.map((label, i) => C.el("button", {
      type: "button", class: label === entry.guess ? "guess" : "", "data-label": label,
      title: i < 10 ? `key ${i}` : null,
    }, label)), C.el("button", { type: "button", class: "danger", "data-discard": "" }, "Discard")),
    C.el("p", { class: "message", role: "status" }));
    card.addEventListener("click", (e) => {
      const button = e.target.closest("button");
      if (!button || button.disabled) return;
      decide(card, button.hasAttribute("data-discard") ? null : button.dataset.label);
    });
    card.addEventListener("keydown", (e) => {
      if (card.classList.contains("done") || card.hasAttribute("aria-busy")) {
        if (e.key === "ArrowRight" || e.key === "ArrowDown") move(card, 1, e);
        if (e.key === "ArrowLeft" || e.key === "ArrowUp") move(card, -1, e);
        return;
      }
      if (/^[0-9]$/.test(e.key) && labels[Number(e.key)] !== undefined) { e.preventDefault(); decide(card, labels[Number(e.key)]); }
      else if (e.key === "x" || e.key === "Delete") { e.preventDefault(); decide(card, null); }
      else if (e.key === "ArrowRight" || e.key === "ArrowDown") move(card, 1, e);
      else if (e.key === "ArrowLeft" || e.key === "ArrowUp") move(card, -1, e);
    });
    return card;
  }

  function move(card, step, event) {
    const to = step > 0 ? card.nextElementSibling : card.previousElementSibling;
    if (to) { event.preventDefault(); to.focus(); }
  }

  async function load() {
    const model = modelSelect.value;
    document.getElementById("export").href = `/admin/review/export?model=${encodeURIComponent(model)}`;
    const models = await C.api("/v1/models");
    const found = models.ok ? models.data.models.find((m) => m.model === model) : null;
    labels = found ? found.labels : [];
    const answer = await C.api(`/admin/review?model=${encodeURIComponent(model)}&limit=60`);
    if (!answer.ok) {
      grid.replaceChildren(C.el("p", { class: "error", role: "alert" }, C.message(answer)));
      return;
    }
    waiting = answer.data.waiting;
    decided = answer.data.decided;
    progress();
    grid.replaceChildren(...(answer.data.items.length
      ? answer.data.items.map(item)
      : [C.el("p", { class: "hint" }, "Nothing waits for review.")]));
  }

  modelSelect.addEventListener("change", () => C.poll(load));
  C.poll(load);
})();
