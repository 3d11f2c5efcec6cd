"""One retrain job, run in its own process: collect, train, build, gate, register, roll out.

Phases and their share of the progress: collecting (the labelled data, as one ImageFolder
snapshot), training (per epoch), building (quantizing and measuring the variants through
`offline.publish`, whose INT8 and BF16 gates apply as to every build), gating (the FP32
candidate against the serving champion on the fixed held-out split: at most
`retrain_max_drop_points` below it), then registering through `publish_built` (the registry's
challenger) and, with `retrain_rollout` above 0, a canary rollout the controller decides.
A candidate refused by a gate is recorded in the job with its figures and never registered.

The default digits model retrains with `offline.train` on its training split plus the new
labels (by default fine-tuning the champion's weights); an imported model keeps its FP32
file and re-runs calibration and the gate on the new labelled images (`offline.importing`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from lifecycle.promote import family_entries, publish_built
from lifecycle.registry import CHAMPION, Registry
from lifecycle.retrain import JOB_FILE, Job, Jobs
from lifecycle.settings import RetrainSettings
from lifecycle.training_data import TrainingImages
from offline.gate import compare_to_champion
from runners.errors import AccuracyGateFailed, Conflict, NotFound, ServingError
from runners.repository import CARD_JSON, ModelEntry

log = logging.getLogger("lifecycle.retrain")

FINE_TUNE_EPOCHS = 5
SCRATCH_EPOCHS = 30


class Rejected(ServingError):
    """A candidate a gate refused: recorded with its figures, not registered."""

    http_status = 422
    reason = "retrain_rejected"

    def __init__(self, message: str, verdict: dict[str, Any]) -> None:
        super().__init__(message)
        self.verdict = verdict


class Progress:
    """Writes the job's record at each step (the readers see the file)."""

    def __init__(self, jobs: Jobs, job: Job) -> None:
        self.jobs = jobs
        self.job = job

    def __call__(self, **changes: Any) -> Job:
        self.job = self.job.model_copy(update=changes)
        self.jobs.save(self.job)
        return self.job


def _labelled_folder(folder: Path, labels: tuple[str, ...]) -> list[tuple[Path, int]]:
    found: list[tuple[Path, int]] = []
    for label in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
        if label.name in labels:
            index = labels.index(label.name)
            found.extend((file, index) for file in sorted(label.iterdir()) if file.is_file())
    return found


def _digit_pixels(
    files: list[tuple[Path, int]], entry: ModelEntry
) -> tuple[np.ndarray, np.ndarray]:
    """The labelled images as the training code's uint8 digits: decoded and resized by the
    served preprocessing, before its scaling (so 0-255, as the training split)."""
    from runners.preprocessing import decode_and_preprocess

    raw = entry.preprocess.model_copy(update={"scale": 1.0, "mean": (0.0,), "std": (1.0,)})
    images = [
        np.clip(np.rint(decode_and_preprocess(path.read_bytes(), raw)[0]), 0, 255).astype(np.uint8)
        for path, _ in files
    ]
    side = (entry.preprocess.height, entry.preprocess.width)
    stacked = np.stack(images) if images else np.empty((0, *side), dtype=np.uint8)
    return stacked, np.array([index for _, index in files], dtype=np.int64)


def _oversampled(
    images: np.ndarray, labels: np.ndarray, train_size: int, share: float
) -> tuple[np.ndarray, np.ndarray]:
    """The new labels repeated until they are at least `share` of an epoch: a few hundred
    among thousands would otherwise teach the model little."""
    if not len(images) or share <= 0:
        return images, labels
    repeats = max(1, math.ceil(share * train_size / ((1 - share) * len(images))))
    return np.tile(images, (repeats, 1, 1)), np.tile(labels, repeats)


def _top1(path: Path, inputs: np.ndarray, labels: np.ndarray) -> float:
    from offline.evaluate import predict_top1, top1_accuracy

    return top1_accuracy(predict_top1(path, inputs), labels)


def _card(staging: Path, family: str) -> dict[str, Any]:
    try:
        card: dict[str, Any] = json.loads((staging / f"{family}_fp32" / CARD_JSON).read_text())
    except (OSError, ValueError):
        return {}
    return card


def _verdict(
    staging: Path, family: str, figures: tuple[float, float], limit: float, refused: str | None
) -> dict[str, Any]:
    """The job's verdict; `figures`: champion and candidate FP32 top-1 on the same split."""
    champion_top1, candidate_top1 = figures
    card = _card(staging, family)
    evaluation = card.get("evaluation") or {}
    comparison = compare_to_champion(champion_top1, candidate_top1, limit)
    gate = card.get("gate") or {}
    bf16 = card.get("bf16") or {}
    passed = comparison.passed and refused is None
    why = comparison.explain() if refused is None else f"{refused}; {comparison.explain()}"
    return {
        "champion_top1": champion_top1,
        "candidate_top1": {
            "fp32": candidate_top1,
            "int8": evaluation.get("int8_top1"),
            "bf16": evaluation.get("bf16_top1"),
        },
        "drop_points": comparison.drop_points,
        "max_drop_points": limit,
        "int8_gate": {"passed": gate.get("passed"), "drop_points": gate.get("drop_points")},
        "bf16": {"published": bf16.get("published"), "reason": bf16.get("reason")},
        "passed": passed,
        "why": why,
    }


def _build_digits(
    step: Progress,
    settings: RetrainSettings,
    served: dict[str, ModelEntry],
    data: Path,
    epochs: int,
) -> tuple[Any, str]:
    """The build: train, publish (INT8 gate; BF16 tried where the champion serves one, so
    the candidate can take its traffic), then the comparison with the champion."""
    champion = served["fp32"]
    from offline import digits
    from offline.data import load_heldout, load_splits

    files = _labelled_folder(data, digits.LABELS)
    new_images, new_labels = _digit_pixels(files, champion)
    train_size = len(load_splits().train_images)
    extra = _oversampled(new_images, new_labels, train_size, settings.retrain_new_label_share)
    fine_tune = None if settings.retrain_from_scratch else champion.onnx_path
    start = "from scratch" if fine_tune is None else f"from version {champion.version}"
    how = (
        f"Retrained {start} for {epochs} epochs on the training split plus {len(files)} new "
        f"labelled images, repeated to {len(extra[0])}."
    )
    held_images, held_labels = load_heldout()
    held_inputs = digits.as_served(held_images)

    def on_epoch(done: int, total: int, _loss: float) -> None:
        step(phase=f"training: epoch {done}/{total}", progress=round(0.05 + 0.6 * done / total, 4))

    def build(staging: Path) -> None:
        step(phase="training", progress=0.05)
        refused = None
        try:
            digits.build(
                staging, retrain=True, epochs=epochs, source=champion.directory.parent,
                measure_duration_s=settings.retrain_measure_duration_s, extra=extra,
                fine_tune=fine_tune, on_epoch=on_epoch, how=how, bf16="bf16" in served,
            )  # fmt: skip
        except AccuracyGateFailed as exc:
            refused = exc.message
        step(state="gating", phase="gating", progress=0.9)
        candidate = staging / f"{digits.FAMILY}_fp32" / "1" / "model.onnx"
        verdict = _verdict(
            staging, digits.FAMILY,
            (_top1(champion.onnx_path, held_inputs, held_labels),
             _top1(candidate, held_inputs, held_labels)),
            settings.retrain_max_drop_points, refused,
        )  # fmt: skip
        verdict["held_out"] = f"{len(held_labels)} images of data/digits_heldout.npz"
        step(verdict=verdict)
        if not verdict["passed"]:
            raise Rejected(verdict["why"], verdict)

    return build, how


def _build_imported(
    step: Progress, settings: RetrainSettings, champion: ModelEntry, data: Path
) -> tuple[Any, str]:
    from offline.importing.images import load_images
    from offline.importing.pipeline import import_model

    labels = tuple(champion.labels)
    if not _labelled_folder(data, labels):
        raise Rejected(
            "no labelled images: an imported model is re-calibrated and gated on them",
            {"passed": False, "why": "no labelled images"},
        )
    how = "Re-calibrated and gated on the labelled images of the review queue and uploads."

    def build(staging: Path) -> None:
        step(phase="calibrating", progress=0.1)
        refused = None
        labels_file = staging.parent / f".{champion.family}-labels.txt"
        labels_file.write_text("\n".join(labels) + "\n")
        try:
            import_model(
                champion.onnx_path, champion.family, labels=labels_file, calibration=data,
                spec=champion.preprocess, validation=data, repository=staging,
                batching=champion.batching, output_kind=champion.output_kind,
                measure_duration_s=settings.retrain_measure_duration_s, replace=True,
                summary=f"{champion.family}, re-calibrated on new labelled images",
            )  # fmt: skip
        except AccuracyGateFailed as exc:
            refused = exc.message
        finally:
            labels_file.unlink(missing_ok=True)
        step(state="gating", phase="gating", progress=0.9)
        _, valid = load_images(data, data, labels, champion.preprocess)
        assert valid.labels is not None
        candidate = staging / f"{champion.family}_fp32" / "1" / "model.onnx"
        verdict = _verdict(
            staging, champion.family,
            (_top1(champion.onnx_path, valid.samples, valid.labels),
             _top1(candidate, valid.samples, valid.labels)),
            settings.retrain_max_drop_points, refused,
        )  # fmt: skip
        verdict["held_out"] = f"{len(valid.labels)} new labelled images (no fixed split)"
        step(verdict=verdict)
        if not verdict["passed"]:
            raise Rejected(verdict["why"], verdict)

    return build, how


def _roll_out(
    settings: RetrainSettings, registry: Registry, where: tuple[Path, str, int]
) -> dict[str, Any]:
    """Roll version `number` out as a canary (the controller decides), or leave it the
    challenger; `where`: repository, family, number. What happened, for the job."""
    from lifecycle import rollout

    repository, family, number = where
    if settings.retrain_rollout <= 0:
        return {
            "started": False,
            "why": "IMGSERVE_RETRAIN_ROLLOUT is 0: the registry's challenger, for a person",
        }
    try:
        started = rollout.start(
            registry, repository, family, number, canary_share=settings.retrain_rollout,
            shadow_share=settings.retrain_shadow_share, decide=True,
        )  # fmt: skip
    except (Conflict, NotFound) as exc:
        return {"started": False, "why": exc.message}
    return {"started": True, **started.model_dump()}


def run(folder: Path, settings: RetrainSettings | None = None) -> Job:
    """Run the job recorded in `folder` to its end; the record says how it ended."""
    settings = settings or RetrainSettings()
    jobs = Jobs(settings)
    job = Job.model_validate_json((folder / JOB_FILE).read_text())
    step = Progress(jobs, job)
    with contextlib.suppress(OSError):
        os.nice(settings.retrain_nice)
    step(
        state="running", phase="collecting", progress=0.01, pid=os.getpid(), started_at=time.time()
    )
    log.info("retrain %s of %s: %s", job.job, job.model, job.reason)
    try:
        repository = Path(job.repository)
        entries = family_entries(repository, job.model)
        if "fp32" not in entries:
            raise NotFound(f"{repository} serves no model {job.model!r} (fp32)")
        champion = entries["fp32"]
        registry = Registry()
        if registry.alias(job.model, CHAMPION) is None:
            raise Conflict(
                f"{job.model} has no champion in the registry {registry.where}: a retrain "
                f"would replace what the repository serves; register it first (make models)"
            )
        with tempfile.TemporaryDirectory(prefix=f"retrain-{job.model}-") as scratch:
            data = Path(scratch) / "labelled"
            data.mkdir()
            used = TrainingImages(settings).snapshot(job.model, data)
            log.info("%d labelled images", used)
            step(labels_used=used, phase="training", progress=0.05)
            from offline import digits

            if job.model == digits.FAMILY:
                epochs = (
                    job.epochs
                    or settings.retrain_epochs
                    or (SCRATCH_EPOCHS if settings.retrain_from_scratch else FINE_TUNE_EPOCHS)
                )
                step(epochs=epochs)
                build, how = _build_digits(step, settings, entries, data, epochs)
            else:
                build, how = _build_imported(step, settings, champion, data)
            published = publish_built(
                registry, repository, job.model, build, f"retrain {job.job} ({job.reason}): {how}"
            )
        number = published.version.number
        registry.tag(job.model, number, "retrain_job", job.job)
        log.info("registered %s version %d", job.model, number)
        rolled = (
            _roll_out(settings, registry, (repository, job.model, number))
            if not published.promoted
            else {"started": False, "why": "no champion served: it is the champion"}
        )
        log.info("rollout: %s", rolled)
        step(state="registered", phase="registered", version=number, progress=1.0, rollout=rolled)
    except Rejected as exc:
        log.info("rejected: %s", exc.message)
        step(state="rejected", phase="rejected", verdict=exc.verdict, progress=1.0)
    except ServingError as exc:
        log.error("failed: %s", exc.message)
        step(state="failed", phase=f"failed in {step.job.phase}", error=exc.message)
    except Exception as exc:
        log.error("failed: %s", traceback.format_exc())
        step(
            state="failed",
            phase=f"failed in {step.job.phase}",
            error=f"{type(exc).__name__}: {exc}",
        )
    finally:
        step(finished_at=time.time())
        jobs.release(step.job)
    return step.job
