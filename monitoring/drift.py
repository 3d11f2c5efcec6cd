"""Drift: a window of the prediction log compared with the served version's reference.

A reference is made when a version is published (`offline.publish`), from the held-out data
the version was judged on: each image sent through the serving preprocessing and the FP32
model, and what the prediction log would record of it kept (the task's `drift_features`:
for a classifier the top-1 class and confidence, width, height, pixel mean and spread). It is
`drift_reference.json` beside the model card in each variant directory, and an artifact of
the registry version. A check (`check`) reads the log's answered rows of that version in a
time window and compares each feature with the reference through Evidently
(`monitoring.evidently_report`), with the test and threshold the task gives it.

    summary = check("digits", start, end, ...)   # TooFewRows when the window is too quiet
    latest("digits")                             # the last stored check, or None

A check's summary: the model, version, window, `drifted` (any feature drifted), `score` (the
largest statistic / threshold: 1 or more is drift), each feature's test, and the task's view of
the reference and the window (class shares, confidence histogram). `store` keeps it per model
(`latest.json`, Evidently's `report.html`, `history.jsonl`) under the drift folder, where the
service's endpoints and gauges read it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import and_, select

from monitoring.schema import predictions
from monitoring.settings import DriftSettings, PredictionLogSettings
from monitoring.store import open_database
from runners.errors import NotComputed, NotFound, TooFewRows
from runners.model import LoadedModel
from runners.preprocessing import ImageLimits
from runners.repository import CONFIG_FILE, DRIFT_REFERENCE, ModelEntry, read_model
from runners.tasks import get_task

log = logging.getLogger(__name__)

REFERENCE_FORMAT = 1
REPORT_HTML = "report.html"
LATEST_JSON = "latest.json"
HISTORY_JSONL = "history.jsonl"
CHUNK = 64  # images preprocessed and run at once while a reference is made


def make_reference(
    entry: ModelEntry, images: Sequence[bytes], data: str, model: LoadedModel | None = None
) -> dict[str, Any]:
    """The reference of `entry`'s version from held-out images as clients send them (encoded
    bytes): each through the task's preprocessing and the model (`model`, or `entry` loaded)."""
    task = get_task(entry.task)
    model = model or LoadedModel.load(entry, warmup_batch_sizes=(1,))
    size = max(1, min(CHUNK, entry.batching.max_batch_size or 1))
    columns: dict[str, list[Any]] = {feature.name: [] for feature in task.drift_features}
    limits = ImageLimits()
    for start in range(0, len(images), size):
        prepared = task.prepare(entry, images[start : start + size], limits)
        if prepared.count == 0:
            continue
        rows = task.reference_columns(entry, model.run(prepared.inputs), prepared.metas)
        for name, values in rows.items():
            columns[name].extend(values)
    count = len(next(iter(columns.values()), []))
    if count == 0:
        raise NotFound(f"{entry.family}: none of the {len(images)} reference images decoded")
    return {
        "format": REFERENCE_FORMAT,
        "task": task.name,
        "model": entry.family,
        "data": data,
        "count": count,
        "made_at": time.time(),
        "columns": columns,
    }


def reference_text(reference: dict[str, Any]) -> str:
    return json.dumps(reference, separators=(",", ":")) + "\n"


def write_file(path: Path, text: str) -> None:
    """Write a file whole: aside, then renamed, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def family_entries(repository: Path, family: str) -> list[ModelEntry]:
    """The family's variant directories, FP32 first."""
    found = []
    if repository.is_dir():
        for path in sorted(repository.iterdir()):
            if not path.name.startswith(".") and (path / CONFIG_FILE).is_file():
                entry = read_model(path)
                if entry.family == family:
                    found.append(entry)
    return sorted(found, key=lambda entry: entry.variant != "fp32")


def ensure_reference(
    repository: Path, family: str, images: Sequence[bytes], data: str, *, force: bool = False
) -> bool:
    """Write the served version's reference into each variant directory of `family` that
    lacks it (all of them with `force`); whether anything was written."""
    entries = family_entries(repository, family)
    if not entries:
        raise NotFound(f"{repository} has no model {family!r}")
    missing = [e for e in entries if force or not (e.directory / DRIFT_REFERENCE).is_file()]
    if not missing:
        return False
    text = reference_text(make_reference(entries[0], images, data))
    for entry in missing:
        write_file(entry.directory / DRIFT_REFERENCE, text)
        log.info("%s: drift reference of version %d written to %s", family, entry.version,
                 entry.directory / DRIFT_REFERENCE)  # fmt: skip
    return True


def read_reference(repository: Path, family: str) -> tuple[ModelEntry, dict[str, Any]]:
    """The served entry (FP32 first) and its version's reference: the file beside the card,
    which promotion carries from the registry version and a rollout keeps with the champion."""
    entries = family_entries(repository, family)
    if not entries:
        raise NotFound(f"{repository} has no model {family!r}")
    for entry in entries:
        path = entry.directory / DRIFT_REFERENCE
        if path.is_file():
            reference: dict[str, Any] = json.loads(path.read_text())
            return entry, reference
    raise NotComputed(
        f"{family} version {entries[0].version} has no drift reference: make it with "
        f"python -m monitoring reference --model {family}"
    )


def window(
    log_settings: PredictionLogSettings,
    family: str,
    *,
    version: int,
    names: Sequence[str],
    start: float,
    end: float,
) -> dict[str, list[Any]]:
    """The named columns of the log's answered rows of one version in [start, end)."""
    engine = open_database(log_settings.url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(*(predictions.c[name] for name in names)).where(
                    and_(
                        predictions.c.model == family,
                        predictions.c.version == version,
                        predictions.c.outcome == "ok",
                        predictions.c.at >= start,
                        predictions.c.at < end,
                    )
                )
            ).all()
    finally:
        engine.dispose()
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for row in rows:
        if any(value is None for value in row):
            continue  # an answer whose statistics were not taken
        for name, value in zip(names, row, strict=True):
            columns[name].append(value)
    return columns


def compare(
    entry: ModelEntry,
    reference: dict[str, Any],
    current: dict[str, list[Any]],
    html: Path | None = None,
) -> dict[str, Any]:
    """The summary of one comparison of `current` rows with the reference (see the module)."""
    from monitoring.evidently_report import compare as evidently_compare

    task = get_task(entry.task)
    results = evidently_compare(reference["columns"], current, task.drift_features, html)
    return {
        "model": entry.family,
        "version": entry.version,
        "drifted": any(r.drifted for r in results),
        "score": max(r.statistic / r.threshold for r in results),
        "features": [r.as_dict() for r in results],
        "reference": task.drift_view(entry, reference["columns"]),
        "current": task.drift_view(entry, current),
    }


def check(
    family: str,
    start: float,
    end: float,
    *,
    repository: Path,
    min_rows: int,
    log_settings: PredictionLogSettings | None = None,
    html: Path | None = None,
) -> dict[str, Any]:
    """Compare the log's window [start, end) of the served version with its reference;
    TooFewRows when the window holds fewer than `min_rows` answered images, NotComputed when
    the version has no reference."""
    entry, reference = read_reference(repository, family)
    names = [feature.name for feature in get_task(entry.task).drift_features]
    current = window(
        log_settings or PredictionLogSettings(),
        family,
        version=entry.version,
        names=names,
        start=start,
        end=end,
    )
    count = len(current[names[0]])
    if count < min_rows:
        raise TooFewRows(
            f"{family} version {entry.version}: {count} answered images between "
            f"{_iso(start)} and {_iso(end)}, fewer than the {min_rows} a drift check needs"
        )
    summary = compare(entry, reference, current, html)
    return {
        **summary,
        "window": {"start": start, "end": end, "count": count},
        "computed_at": time.time(),
    }


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def store(summary: dict[str, Any], html: Path | None, settings: DriftSettings) -> Path:
    """Keep a check as its model's latest (with its report), and append it to the history."""
    folder = settings.folder / summary["model"]
    folder.mkdir(parents=True, exist_ok=True)
    if html is not None and html.resolve() != (folder / REPORT_HTML).resolve():
        write_file(folder / REPORT_HTML, html.read_text())
    write_file(folder / LATEST_JSON, json.dumps(summary) + "\n")
    entry = {"at": summary["computed_at"], "score": summary["score"],
             "drifted": summary["drifted"]}  # fmt: skip
    kept = history(summary["model"], settings)[-(settings.drift_history - 1) :]
    kept = kept if settings.drift_history > 1 else []
    write_file(folder / HISTORY_JSONL, "".join(json.dumps(e) + "\n" for e in [*kept, entry]))
    return folder


def latest(model: str, settings: DriftSettings | None = None) -> dict[str, Any] | None:
    """The model's last stored check, or None: what a drift-triggered retrain reads."""
    path = (settings or DriftSettings()).folder / model / LATEST_JSON
    if not path.is_file():
        return None
    found: dict[str, Any] = json.loads(path.read_text())
    return found


def history(model: str, settings: DriftSettings | None = None) -> list[dict[str, Any]]:
    """The model's stored checks, oldest first: at, score, drifted."""
    path = (settings or DriftSettings()).folder / model / HISTORY_JSONL
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report_path(model: str, settings: DriftSettings | None = None) -> Path:
    return (settings or DriftSettings()).folder / model / REPORT_HTML
