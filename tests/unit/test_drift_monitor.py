"""The service's scheduled drift check (monitoring.monitor) runs the real drift command in a
subprocess over a real log database: a quiet window, a computed one, a broken repository;
and the checks kept per model (monitoring.drift.store)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from monitoring import drift
from monitoring.monitor import DriftMonitor
from monitoring.schema import predictions
from monitoring.settings import DriftSettings, PredictionLogSettings
from monitoring.store import open_database
from runners.errors import NotComputed
from runners.repository import DRIFT_REFERENCE

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
ROWS = 60


def _log_heldout_rows(data: Path, count: int, shifted: bool = False) -> None:
    """Rows as the service logs them, with the reference's own values: no drift; `shifted`:
    every answer the same unsure class, as inverted digits get."""
    reference = json.loads((REPOSITORY / "digits_fp32" / DRIFT_REFERENCE).read_text())
    columns = reference["columns"]
    picked = range(0, reference["count"], reference["count"] // count)[:count]  # every class
    now = time.time()
    engine = open_database(PredictionLogSettings(data_dir=data).url)
    with engine.begin() as connection:
        connection.execute(
            predictions.insert(),
            [
                {"at": now - 1, "request_id": f"r{i}", "image_index": 0, "model": "digits",
                 "variant": "fp32", "version": 1, "backend": "onnxruntime", "outcome": "ok",
                 "label": "8" if shifted else columns["label"][i],
                 "score": 0.45 if shifted else columns["score"][i], "latency_ms": 1.0,
                 "width": columns["width"][i], "height": columns["height"][i], "format": "PNG",
                 "pixel_mean": columns["pixel_mean"][i], "pixel_std": columns["pixel_std"][i]}
                for i in picked
            ],
        )  # fmt: skip
    engine.dispose()


def _monitor(
    data: Path, repository: Path = REPOSITORY, on_drift: Any = None
) -> tuple[DriftMonitor, list[Any]]:
    seen: list[Any] = []
    settings = DriftSettings(data_dir=data, drift_min_rows=ROWS, drift_interval_s=0)
    monitor = DriftMonitor(
        repository, ("digits",), lambda *call: seen.append(call), settings, on_drift=on_drift
    )
    return monitor, seen


def test_only_a_check_that_finds_drift_calls_the_reaction(tmp_path: Path) -> None:
    reacted: list[tuple[str, bool]] = []
    quiet, _ = _monitor(tmp_path / "quiet", on_drift=lambda m, s: reacted.append((m, s["drifted"])))
    _log_heldout_rows(tmp_path / "quiet", ROWS)
    assert asyncio.run(quiet.check("digits")) == "computed"
    assert reacted == []
    moved, _ = _monitor(tmp_path / "moved", on_drift=lambda m, s: reacted.append((m, s["drifted"])))
    _log_heldout_rows(tmp_path / "moved", ROWS, shifted=True)
    assert asyncio.run(moved.check("digits")) == "computed"
    assert reacted == [("digits", True)]


def test_a_quiet_window_is_not_judged_and_a_full_one_is(tmp_path: Path) -> None:
    data = tmp_path / "data"
    monitor, seen = _monitor(data)
    assert asyncio.run(monitor.check("digits")) == "too_few_rows"
    assert seen == [("digits", None, "too_few_rows")]
    assert drift.latest("digits", monitor.settings) is None

    _log_heldout_rows(data, ROWS)
    assert asyncio.run(monitor.check("digits")) == "computed"
    model, summary, outcome = seen[-1]
    assert (model, outcome) == ("digits", "computed")
    assert summary == drift.latest("digits", monitor.settings)
    assert summary["window"]["count"] == ROWS and summary["version"] == 1
    assert not summary["drifted"] and summary["score"] < 1, summary["features"]
    assert drift.report_path("digits", monitor.settings).read_text().lstrip().startswith("<!DOC")
    assert [h["drifted"] for h in drift.history("digits", monitor.settings)] == [False]


def test_a_check_that_fails_is_counted_failed(tmp_path: Path) -> None:
    monitor, seen = _monitor(tmp_path / "data", repository=tmp_path / "missing")
    assert asyncio.run(monitor.check("digits")) == "failed"
    assert seen == [("digits", None, "failed")]


def test_the_history_keeps_the_most_recent_checks(tmp_path: Path) -> None:
    settings = DriftSettings(data_dir=tmp_path, drift_history=3)
    for at in range(5):
        summary = {"model": "digits", "computed_at": float(at), "score": at / 10,
                   "drifted": at > 3}  # fmt: skip
        drift.store(summary, None, settings)
    assert [h["at"] for h in drift.history("digits", settings)] == [2.0, 3.0, 4.0]
    assert drift.latest("digits", settings) == summary
    assert drift.latest("cats", settings) is None and drift.history("cats", settings) == []


def test_a_version_without_a_reference_fails_and_says_how_to_make_one(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(REPOSITORY / "digits_fp32", repository / "digits_fp32")
    (repository / "digits_fp32" / DRIFT_REFERENCE).unlink()
    with pytest.raises(NotComputed, match="python -m monitoring reference --model digits"):
        drift.check("digits", 0, 1, repository=repository, min_rows=ROWS)
    monitor, seen = _monitor(tmp_path / "data", repository=repository)
    assert asyncio.run(monitor.check("digits")) == "failed"
    assert seen == [("digits", None, "failed")]
