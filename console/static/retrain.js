// Retrain: upload labelled images (POST /admin/training-images), start a job
// (POST /admin/retrain), watch it (GET /admin/retrain/{job}) to the gate's verdict and the
// registered version. A registered version is rolled out as a canary by the retrain itself when
// the service's IMGSERVE_RETRAIN_ROLLOUT is above 0 (the job's `rollout.started`); otherwise a
// button here rolls it out (POST /admin/rollout). The rollout panel below promotes or rolls back.
// A 404 from GET /admin/retrain means this service has no retraining: the page says so.
"use strict";
(() => {
  const C = window.Console;
  const FINAL = new Set(["registered", "rejected", "failed"]);
  const WHERE = {
    canary: "a canary: promote or roll it back below",
    champion: "the champion",
    rolled_back: "rolled back",
    challenger: "the registry's challenger, not rolled out",
    unknown: "unknown",
  };
  let watching = null;

  function model() { return encodeURIComponent(C.selectedModel()); }

  function verdictLine(verdict) {
    if (!verdict) return "–";
    return `${verdict.passed ? "passed" : "refused"}: ${verdict.why ?? ""}`;
  }

  function rolloutLine(job) {
    const r = job.rollout;
    if (!r) return "–";
    if (!r.started) return `not rolled out: ${r.why ?? ""}`;
    const where = WHERE[r.now] ?? r.now ?? "–";
    return `rolled out at ${C.percent(r.canary_share)} of requests; now ${where}`;
  }

  function rollOutButton(job) {
    const existing = document.getElementById("job-actions");
    const wanted = job.state === "registered" && job.version && C.loggedIn && job.rollout && !job.rollout.started
      && job.rollout.now === "challenger";
    if (!wanted) { if (existing) existing.remove(); return; }
    if (existing) return;
    const button = C.el("button", { type: "button", id: "job-actions" }, `Roll out v${job.version} as a canary`);
    button.addEventListener("click", async () => {
      button.disabled = true;
      const answer = await C.api("/admin/rollout", { method: "POST", json: { model: C.selectedModel(), version: job.version, canary_share: 0.1, shadow_share: 0 } });
      button.textContent = answer.ok ? `v${job.version} is rolling out` : C.message(answer);
      if (window.Rollout) window.Rollout.refresh();
    });
    document.getElementById("job").append(button);
  }

  function showJob(job) {
    const shown = document.getElementById("job");
    const changed = shown.dataset.state !== job.state || shown.dataset.now !== (job.rollout?.now ?? "");
    C.set("job-id", job.job);
    C.set("job-state", job.state);
    C.set("job-phase", job.phase ?? "–");
    C.set("job-labels", job.labels_used ?? "–");
    C.set("job-version", job.version ? `v${job.version}` : "–");
    C.set("job-rollout", rolloutLine(job));
    shown.dataset.state = job.state;
    shown.dataset.now = job.rollout?.now ?? "";
    document.getElementById("job-progress").value = job.progress ?? 0;
    C.set("job-percent", C.percent(job.progress ?? 0));
    C.set("verdict-line", job.error ? `failed: ${job.error}` : verdictLine(job.verdict));
    document.getElementById("verdict-line").className = job.verdict ? (job.verdict.passed ? "ok" : "bad") : (job.error ? "bad" : "");
    C.set("verdict", job.verdict ? JSON.stringify(job.verdict, null, 2) : "–");
    C.set("log-tail", job.log_tail || "–");
    rollOutButton(job);
    if (changed && job.state === "registered" && window.Rollout) window.Rollout.refresh();
  }

  // A job is read each second until it ends; then, while its version is a canary, every few
  // seconds: a promotion or a rollback changes where it stands.
  async function watch(job) {
    clearTimeout(watching);
    const answer = await C.api(`/admin/retrain/${encodeURIComponent(job)}`);
    if (!answer.ok) { C.status(C.message(answer)); return; }
    const found = answer.data;
    showJob(found);
    if (!FINAL.has(found.state)) watching = setTimeout(() => watch(job).catch(lost), 1000);
    else {
      if (found.rollout && found.rollout.now === "canary") watching = setTimeout(() => watch(job).catch(lost), 3000);
      listJobs().catch(lost);
    }
  }

  function lost(error) { C.status(`cannot reach the service: ${error.message}`); }

  async function listJobs() {
    const answer = await C.api(`/admin/retrain?model=${model()}`);
    if (answer.status === 404) {
      document.getElementById("retrain-missing").hidden = false;
      document.getElementById("retrain").hidden = true;
      return false;
    }
    if (!answer.ok) { C.status(C.message(answer)); return true; }
    document.querySelector("#jobs tbody").replaceChildren(...answer.data.jobs.map((j) => {
      const link = C.el("button", { type: "button", class: "link" }, j.job);
      link.addEventListener("click", () => watch(j.job).catch(lost));
      return C.el("tr", {}, C.el("td", {}, link), C.el("td", {}, j.state), C.el("td", {}, C.when(j.started_at ?? j.created_at)),
        C.el("td", { class: "num" }, j.version ? `v${j.version}` : "–"));
    }));
    return true;
  }

  function uploaded(data) {
    const refused = data.refused || [];
    const named = refused.slice(0, 5).map((r) => `${r.name} (${r.reason})`).join(", ");
    return `Uploaded: ${data.accepted} accepted` + (refused.length ? `, ${refused.length} refused: ${named}${refused.length > 5 ? ", …" : ""}` : "")
      + (data.total !== undefined ? `; ${data.total} labelled images in all` : "");
  }

  document.getElementById("upload-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const zip = document.getElementById("zip").files[0];
    const images = [...document.getElementById("images").files];
    const label = document.getElementById("label").value.trim();
    let body;
    if (zip) body = zip;
    else if (images.length && label) {
      body = new FormData();
      body.append("label", label);
      for (const file of images) body.append("images", file, file.name);
    } else {
      C.set("upload-message", "Choose a zip, or images and their label.");
      return;
    }
    C.set("upload-message", "Uploading…");
    const headers = zip ? { "Content-Type": "application/zip" } : {};
    const answer = await C.api(`/admin/training-images?model=${model()}`, { method: "POST", body, headers });
    C.set("upload-message", answer.ok ? uploaded(answer.data) : C.message(answer));
    document.getElementById("upload-message").className = `message ${answer.ok ? "ok" : "bad"}`;
  });

  document.getElementById("start-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const epochs = document.getElementById("epochs").value;
    const answer = await C.api("/admin/retrain", { method: "POST", json: { model: C.selectedModel(), reason: "manual, from the console", epochs: epochs ? Number(epochs) : null } });
    if (!answer.ok) { C.status(C.message(answer)); C.set("start-message", C.message(answer)); return; }
    C.set("start-message", "");
    showJob(answer.data);
    watch(answer.data.job).catch(lost);
  });

  // Reading the jobs needs the credential too: without a session the page shows the forms only.
  // The newest job is shown on arrival, so a page opened while one runs follows it.
  if (C.loggedIn) {
    C.poll(async () => {
      await listJobs();
      const first = document.querySelector("#jobs tbody button");
      if (first && document.getElementById("job-id").textContent === "–") await watch(first.textContent);
    });
  }
})();
