// Retrain: upload labelled images (POST /admin/training-images), start a job
// (POST /admin/retrain), watch it (GET /admin/retrain/{job}) until the gate's verdict, then roll
// the registered version out (POST /admin/rollout); the rollout panel below promotes or rolls
// back. A 404 from GET /admin/retrain means this service has no retraining: the page says so.
"use strict";
(() => {
  const C = window.Console;
  const FINAL = new Set(["registered", "rejected", "failed"]);
  let watching = null;

  function model() { return encodeURIComponent(C.selectedModel()); }

  function showJob(job) {
    C.set("job-id", job.job);
    C.set("job-state", job.state);
    C.set("job-phase", job.phase ?? "–");
    C.set("job-version", job.version ? `v${job.version}` : "–");
    document.getElementById("job").dataset.state = job.state;
    document.getElementById("job-progress").value = job.progress ?? 0;
    C.set("verdict", job.verdict ? JSON.stringify(job.verdict, null, 2) : "–");
    C.set("log-tail", job.log_tail || "–");
    const actions = document.getElementById("job-actions");
    if (job.state === "registered" && job.version && C.loggedIn && !actions) {
      const button = C.el("button", { type: "button", id: "job-actions" }, `Roll out v${job.version} as a canary`);
      button.addEventListener("click", async () => {
        button.disabled = true;
        const answer = await C.api("/admin/rollout", { method: "POST", json: { model: C.selectedModel(), version: job.version, canary_share: 0.1, shadow_share: 0.2 } });
        button.textContent = answer.ok ? `v${job.version} is rolling out` : C.message(answer);
        if (window.Rollout) window.Rollout.refresh();
      });
      document.getElementById("job").append(button);
    }
  }

  async function watch(job) {
    clearTimeout(watching);
    const answer = await C.api(`/admin/retrain/${encodeURIComponent(job)}`);
    if (!answer.ok) { C.status(C.message(answer)); return; }
    showJob(answer.data);
    if (!FINAL.has(answer.data.state)) watching = setTimeout(() => watch(job), 1000);
    else listJobs();
  }

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
      link.addEventListener("click", () => watch(j.job));
      return C.el("tr", {}, C.el("td", {}, link), C.el("td", {}, j.state), C.el("td", {}, C.when(j.started_at)),
        C.el("td", { class: "num" }, j.version ? `v${j.version}` : "–"));
    }));
    return true;
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
      for (const file of images) body.append("files", file, file.name);
    } else {
      C.set("upload-message", "Choose a zip, or images and their label.");
      return;
    }
    C.set("upload-message", "Uploading…");
    const headers = zip ? { "Content-Type": "application/zip" } : {};
    const answer = await C.api(`/admin/training-images?model=${model()}`, { method: "POST", body, headers });
    C.set("upload-message", answer.ok ? `Uploaded: ${JSON.stringify(answer.data)}` : C.message(answer));
  });

  document.getElementById("start-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const epochs = document.getElementById("epochs").value;
    const answer = await C.api("/admin/retrain", { method: "POST", json: { model: C.selectedModel(), reason: "manual", epochs: epochs ? Number(epochs) : null } });
    if (!answer.ok) { C.status(C.message(answer)); return; }
    showJob({ job: answer.data.job, state: answer.data.state, progress: 0 });
    watch(answer.data.job);
  });

  // Reading the jobs needs the credential too: without a session the page shows the forms only.
  if (C.loggedIn) C.poll(listJobs);
})();
