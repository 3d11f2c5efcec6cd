// Rollout: the canary/shadow state from GET /admin/rollouts, promote and roll back through
// POST /admin/promote and /admin/rollback (the session's CSRF header goes with them).
"use strict";
window.Rollout = (() => {
  const C = window.Console;
  const promote = document.getElementById("promote");
  const rollback = document.getElementById("rollback");

  async function refresh() {
    const model = C.selectedModel();
    const [state, models] = await Promise.all([
      C.api(`/admin/rollouts?model=${encodeURIComponent(model)}`),
      C.api("/v1/models"),
    ]);
    if (!state.ok) {
      C.set("rollout-message", C.message(state));
      return;
    }
    const found = models.ok ? models.data.models.find((m) => m.model === model) : null;
    const champion = found ? (found.registry ? found.registry.version : found.variants[0].version) : null;
    const r = state.data.rollout;
    C.set("champion", champion ? `v${champion}` : "–");
    C.set("challenger", r ? `v${r.challenger}` : "none");
    C.set("canary", r ? C.percent(r.canary_share) : "–");
    C.set("shadow", r ? C.percent(r.shadow_share) : "–");
    C.set("decide", r ? (r.decide ? "yes" : "no (manual)") : "–");
    C.set("watched", state.data.watched_for_s === null ? "–" : `${state.data.watched_for_s} s`);
    promote.disabled = rollback.disabled = !(r && C.loggedIn);
    document.getElementById("start").disabled = Boolean(r) || !C.loggedIn;
    document.getElementById("rollout-panel").dataset.state = r ? "rolling" : "idle";
    document.querySelector("#decisions tbody").replaceChildren(
      ...state.data.decisions.slice().reverse().map((d) => C.el("tr", {},
        C.el("td", {}, d.decision ?? d.kind ?? "–"), C.el("td", { class: "wrap" }, d.reason ?? "–"),
        C.el("td", { class: "num" }, d.figures && d.figures.version ? `v${d.figures.version}` : (d.version ? `v${d.version}` : "–")))),
    );
  }

  async function act(kind) {
    promote.disabled = rollback.disabled = true;
    C.set("rollout-message", `${kind}…`);
    const answer = await C.api(`/admin/${kind}`, { method: "POST", json: { model: C.selectedModel(), reason: "manual" } });
    C.set("rollout-message", answer.ok ? `${kind}: done` : C.message(answer));
    await refresh();
  }

  document.getElementById("start-rollout").addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = (id) => document.getElementById(id).value;
    C.set("rollout-message", "starting…");
    const answer = await C.api("/admin/rollout", {
      method: "POST",
      json: {
        model: C.selectedModel(),
        version: Number(value("rollout-version")),
        canary_share: Number(value("canary-share")),
        shadow_share: Number(value("shadow-share")),
        decide: value("rollout-decide") === "yes",
      },
    });
    C.set("rollout-message", answer.ok ? `rolling out v${value("rollout-version")}` : C.message(answer));
    await refresh();
  });
  promote.addEventListener("click", () => act("promote"));
  rollback.addEventListener("click", () => act("rollback"));
  const select = document.getElementById("model");
  if (select) select.addEventListener("change", refresh);
  C.poll(refresh, 3000);
  return { refresh };
})();
