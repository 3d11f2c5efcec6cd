"""Retrain jobs: what starts one, the one-at-a-time rule per model, and their records.

A job is a folder `<data_dir>/retrain/<model>/<job id>/` holding `job.json` (its state,
rewritten whole at each step) and `retrain.log`. The work itself runs in a separate process
(`python -m lifecycle run-job FOLDER`, `lifecycle.retrain_run`), never inside a serving
worker: `request_retrain` records the job, takes the model's lock and starts that process.
The lock is a file (`<model>/.running`, created exclusively) naming the job; a job whose
process is gone without finishing is marked failed and its lock cleared when next looked
at, so a crash never blocks a model for good. The records are the truth for every reader:
the endpoints of any entry worker, the CLI, and the metrics (`collect_metrics`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from lifecycle.settings import RetrainSettings
from runners.errors import BadInput, Conflict, NotFound, ServingError
from runners.settings import REPO_ROOT

log = logging.getLogger(__name__)

State = Literal["queued", "running", "gating", "registered", "rejected", "failed"]
FINAL: tuple[str, ...] = ("registered", "rejected", "failed")
OUTCOMES = FINAL
JOB_FILE = "job.json"
LOG_FILE = "retrain.log"
LOCK_FILE = ".running"
JOB_ID = re.compile(r"[0-9]{8}T[0-9]{6}-[0-9a-f]{6}")
# A queued job has this long to be picked up by its process before it counts as lost.
QUEUED_GRACE_S = 120.0
LOG_TAIL_BYTES = 4000

# Processes this process started, polled so that they are reaped when they end.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class Job(BaseModel):
    """One retrain, as the endpoints show it (`log_tail` is added when read)."""

    job: str
    model: str
    state: State = "queued"
    phase: str = "queued"
    progress: float = Field(default=0.0, ge=0, le=1)
    reason: str
    epochs: int | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    labels_used: int | None = None
    verdict: dict[str, Any] | None = None
    version: int | None = None
    rollout: dict[str, Any] | None = None
    error: str | None = None
    pid: int | None = None
    repository: str

    @property
    def final(self) -> bool:
        return self.state in FINAL


class Jobs:
    """The job records under one data directory."""

    def __init__(self, settings: RetrainSettings | None = None) -> None:
        self.settings = settings or RetrainSettings()
        self.root = self.settings.jobs

    def folder(self, job: Job) -> Path:
        return self.root / job.model / job.job

    def save(self, job: Job) -> None:
        folder = self.folder(job)
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{JOB_FILE}.part"
        partial.write_text(job.model_dump_json(indent=2))
        partial.replace(folder / JOB_FILE)

    def _read(self, path: Path) -> Job | None:
        try:
            return Job.model_validate_json(path.read_text())
        except (OSError, ValueError):
            return None

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def of(self, model: str) -> list[Job]:
        """The model's jobs, newest first (a lost one marked failed)."""
        folder = self.root / model
        if not folder.is_dir():
            return []
        found = [self._read(p / JOB_FILE) for p in folder.iterdir() if p.is_dir()]
        jobs = sorted((job for job in found if job is not None), key=lambda job: job.created_at)
        return [self._settled(job) for job in reversed(jobs)]

    def get(self, job_id: str) -> Job:
        if not JOB_ID.fullmatch(job_id):
            raise NotFound(f"no retrain job {job_id[:64]!r}")
        for model in self.models():
            job = self._read(self.root / model / job_id / JOB_FILE)
            if job is not None:
                return self._settled(job)
        raise NotFound(f"no retrain job {job_id!r}")

    def log_tail(self, job: Job, size: int = LOG_TAIL_BYTES) -> str:
        path = self.folder(job) / LOG_FILE
        try:
            with path.open("rb") as handle:
                handle.seek(max(0, path.stat().st_size - size))
                return handle.read().decode(errors="replace")
        except OSError:
            return ""

    def describe(self, job: Job) -> dict[str, Any]:
        """The endpoint's view: the record without its process id, with where its version's
        rollout stands now and the log's tail."""
        shown = job.model_dump(exclude={"pid", "repository"})
        if job.rollout is not None and job.version is not None:
            shown["rollout"] = {**job.rollout, "now": rollout_now(job)}
        return {**shown, "log_tail": self.log_tail(job)}

    def running(self, model: str) -> Job | None:
        """The model's unfinished job, if any (a lost one is marked failed and unlocked)."""
        lock = self.root / model / LOCK_FILE
        try:
            job_id = lock.read_text().strip()
        except OSError:
            return None
        job = self._read(self.root / model / job_id / JOB_FILE)
        if job is not None:
            job = self._settled(job)
        if job is None or job.final:
            self._unlock(model, job_id)
            return None
        return job

    def create(self, model: str, reason: str, epochs: int | None, repository: Path) -> Job:
        """Record a queued job and take the model's lock; Conflict when one is unfinished."""
        (self.root / model).mkdir(parents=True, exist_ok=True)
        job = Job(
            job=time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3),
            model=model,
            reason=reason,
            epochs=epochs,
            created_at=time.time(),
            repository=str(repository),
        )
        self.save(job)  # first: a reader that sees the lock always finds its job
        for _ in range(2):
            try:
                descriptor = os.open(
                    self.root / model / LOCK_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY
                )
            except FileExistsError:
                busy = self.running(model)  # clears a lost job's lock
                if busy is not None:
                    shutil.rmtree(self.folder(job), ignore_errors=True)
                    raise Conflict(
                        f"{model}: retrain job {busy.job} is {busy.state} ({busy.phase}); one "
                        f"runs at a time per model"
                    ) from None
                continue
            with os.fdopen(descriptor, "w") as handle:
                handle.write(job.job)
            return job
        shutil.rmtree(self.folder(job), ignore_errors=True)
        raise Conflict(f"{model}: another retrain is starting")

    def release(self, job: Job) -> None:
        self._unlock(job.model, job.job)

    def _unlock(self, model: str, job_id: str) -> None:
        lock = self.root / model / LOCK_FILE
        try:
            if lock.read_text().strip() == job_id:
                lock.unlink()
        except OSError:
            pass

    def _settled(self, job: Job) -> Job:
        """A job whose process is gone without finishing is failed (and saved so)."""
        if job.final:
            return job
        if job.pid is None:
            lost = time.time() - job.created_at > QUEUED_GRACE_S
        else:
            lost = not _alive(job.pid)
        if not lost:
            return job
        job = job.model_copy(update={
            "state": "failed", "phase": "lost", "finished_at": time.time(),
            "error": job.error or "the retrain process ended without finishing (see the log)",
        })  # fmt: skip
        self.save(job)
        self._unlock(job.model, job.job)
        return job


def rollout_now(job: Job) -> str:
    """Where the job's version stands in the repository: `canary` (being rolled out),
    `champion` (promoted), `rolled_back` (a rollout that ended without it), `challenger`."""
    from lifecycle.promote import family_entries

    try:
        entries = family_entries(Path(job.repository), job.model)
    except ServingError:
        return "unknown"
    if not entries:
        return "unknown"
    first = next(iter(entries.values()))
    if first.rollout is not None and first.rollout.challenger == job.version:
        return "canary"
    if first.version == job.version:
        return "champion"
    if job.rollout is not None and job.rollout.get("started"):
        return "rolled_back"
    return "challenger"


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_process(jobs: Jobs, job: Job) -> Job:
    """Run the job in a new process of its own session (a server's stop signal is not its)."""
    folder = jobs.folder(job)
    env = {**os.environ, "IMGSERVE_DATA_DIR": str(jobs.settings.data_dir.resolve())}
    with (folder / LOG_FILE).open("ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "lifecycle", "run-job", str(folder)],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _CHILDREN[child.pid] = child
    for pid in list(_CHILDREN):  # reap the ones that ended
        _alive(pid)
    # The record is the child's from now on (it writes its pid first): the job as queued.
    return job.model_copy(update={"pid": child.pid})


def request_retrain(
    model: str,
    reason: str,
    *,
    epochs: int | None = None,
    repository: Path | None = None,
    settings: RetrainSettings | None = None,
) -> Job:
    """Start retraining `model` in the background: the trigger every caller uses (the admin
    endpoint, the label count, a drift alert). Conflict when one runs for it already."""
    if not reason or len(reason) > 500:
        raise BadInput("a retrain's reason is 1-500 characters")
    jobs = Jobs(settings)
    if repository is None:
        from serving.settings import ServingSettings

        repository = ServingSettings().repository
    job = jobs.create(model, reason, epochs, repository.resolve())
    try:
        return start_process(jobs, job)
    except OSError as exc:
        failed = job.model_copy(update={"state": "failed", "phase": "start", "error": str(exc),
                                        "finished_at": time.time()})  # fmt: skip
        jobs.save(failed)
        jobs.release(job)
        return failed


def drift_trigger(
    repository: Path, settings: RetrainSettings | None = None
) -> Callable[[str, dict[str, Any]], None] | None:
    """The service's reaction to a drift check that found drift: a retrain of that model, when
    `retrain_on_drift` is set (None otherwise). One already running is left to finish."""
    settings = settings or RetrainSettings()
    if not settings.retrain_on_drift:
        return None

    def react(model: str, summary: dict[str, Any]) -> None:
        reason = f"drift: score {float(summary.get('score') or 0):.2f} in the last window"
        try:
            job = request_retrain(model, reason, repository=repository, settings=settings)
        except Conflict as exc:
            log.info("drift of %s: no new retrain (%s)", model, exc.message)
            return
        log.info("drift of %s: retrain %s started (%s)", model, job.job, reason)

    return react


def labels_since_last(jobs: Jobs, model: str, total: int) -> int:
    """Labels that arrived after the newest job took its data (all of them before any)."""
    for job in jobs.of(model):
        if job.labels_used is not None:
            return max(0, total - job.labels_used)
    return total


def retrain_if_labels_reached(
    model: str,
    total: int,
    settings: RetrainSettings | None = None,
    repository: Path | None = None,
) -> Job | None:
    """The label-count trigger: start a retrain once `retrain_after_labels` new labels arrived
    (none while one runs). `total` is the model's labelled images now."""
    settings = settings or RetrainSettings()
    threshold = settings.retrain_after_labels
    if threshold is None:
        return None
    jobs = Jobs(settings)
    if jobs.running(model) is not None or labels_since_last(jobs, model, total) < threshold:
        return None
    try:
        return request_retrain(
            model, f"labels: {threshold} new", settings=settings, repository=repository
        )
    except Conflict:
        return None


def collect_metrics(settings: RetrainSettings | None = None) -> Iterator[Any]:
    """Prometheus metric families from the job records (a custom collector's `collect`):
    `imgserve_retrain_runs_total{model,outcome}` and `imgserve_retrain_progress{model}`."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    jobs = Jobs(settings)
    runs = CounterMetricFamily(
        "imgserve_retrain_runs", "Finished retrain jobs by outcome.", labels=["model", "outcome"]
    )
    progress = GaugeMetricFamily(
        "imgserve_retrain_progress",
        "Progress (0-1) of the model's running retrain; 0 when none runs.",
        labels=["model"],
    )
    for model in jobs.models():
        found = jobs.of(model)
        for outcome in OUTCOMES:
            runs.add_metric([model, outcome], sum(1 for job in found if job.state == outcome))
        running = next((job for job in found if not job.final), None)
        progress.add_metric([model], 0.0 if running is None else running.progress)
    yield runs
    yield progress


class RetrainCollector:
    """`collect_metrics` as a prometheus_client collector."""

    def __init__(self, settings: RetrainSettings | None = None) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Any]:
        try:
            yield from collect_metrics(self.settings)
        except OSError as exc:  # a scrape must not fail on a folder it cannot read
            log.warning("retrain metrics: %s", exc)

    def describe(self) -> list[Any]:
        return []


def dump(job: Job) -> str:
    return json.dumps(job.model_dump(exclude={"pid"}))
