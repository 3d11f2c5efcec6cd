"""Drift on real shifts, in process against the committed digits model's reference: held-out
digits raise no drift over repeated windows (the false-alarm rate), and the same digits
inverted, rotated, blurred, or replaced by photos raise it within one window."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.shifts import SHIFTS, photos
from monitoring import drift
from monitoring.settings import DriftSettings
from offline.data import load_heldout
from offline.digits import HELDOUT_DESCRIPTION, heldout_pngs
from runners.model import LoadedModel
from runners.repository import DRIFT_REFERENCE, read_model
from runners.tasks.classification import CLASSIFICATION

REPO_ROOT = Path(__file__).resolve().parents[2]
WINDOW = DriftSettings().drift_min_rows  # the smallest window a check judges
WINDOWS = 20
# What the thresholds promise at that window size: sampling noise alone crosses one on at most
# 1 window in 20 (a fixed seed draws the same windows every run).
MAX_FALSE_ALARMS = 1


@pytest.fixture(scope="module")
def served() -> tuple[Any, dict[str, Any], LoadedModel]:
    entry = read_model(REPO_ROOT / "model_repository" / "digits_fp32")
    reference = json.loads((entry.directory / DRIFT_REFERENCE).read_text())
    return entry, reference, LoadedModel.load(entry, warmup_batch_sizes=(1,))


def test_the_committed_reference_is_the_heldout_split_as_served(served: Any) -> None:
    entry, reference, model = served
    made = drift.make_reference(entry, heldout_pngs(), HELDOUT_DESCRIPTION, model)
    assert reference["task"] == "classification" and reference["count"] == 1000
    assert reference["columns"]["label"] == made["columns"]["label"]
    np.testing.assert_allclose(reference["columns"]["score"], made["columns"]["score"], atol=1e-5)
    assert set(reference["columns"]["width"]) == {28}
    int8 = read_model(REPO_ROOT / "model_repository" / "digits_int8")
    assert json.loads((int8.directory / DRIFT_REFERENCE).read_text()) == reference


def test_heldout_windows_raise_no_drift(served: Any) -> None:
    entry, reference, _ = served
    rng = np.random.default_rng(20261205)
    alarms = []
    for _ in range(WINDOWS):
        index = rng.choice(reference["count"], WINDOW, replace=False)
        current = {
            name: [values[i] for i in index] for name, values in reference["columns"].items()
        }
        summary = drift.compare(entry, reference, current)
        alarms.append(summary["drifted"])
        assert summary["score"] < 1.5, summary["features"]
    assert sum(alarms) <= MAX_FALSE_ALARMS, f"{sum(alarms)} of {WINDOWS} windows drifted"


def _window(entry: Any, model: LoadedModel, pngs: list[bytes]) -> dict[str, list[Any]]:
    made = drift.make_reference(entry, pngs, "shifted", model)
    columns: dict[str, list[Any]] = made["columns"]
    return columns


@pytest.mark.parametrize("shift", sorted(SHIFTS))
def test_shifted_digits_raise_drift_within_one_window(served: Any, shift: str) -> None:
    entry, reference, model = served
    images, _ = load_heldout()
    rng = np.random.default_rng(7)
    chosen = images[rng.choice(len(images), WINDOW, replace=False)]
    summary = drift.compare(entry, reference, _window(entry, model, SHIFTS[shift](chosen)))
    assert summary["drifted"], summary["features"]
    assert summary["score"] >= 1


def test_photos_instead_of_digits_raise_drift(served: Any, tmp_path: Path) -> None:
    entry, reference, model = served
    html = tmp_path / "report.html"
    summary = drift.compare(entry, reference, _window(entry, model, photos(WINDOW)), html)
    drifted = {f["name"] for f in summary["features"] if f["drifted"]}
    assert {"width", "height", "pixel_mean"} <= drifted, summary["features"]
    text = html.read_text()
    assert text.lstrip().startswith("<!DOCTYPE html>") and "pixel_mean" in text
    tests = {f["name"]: f["test"] for f in summary["features"]}
    assert tests == {f.name: f.test for f in CLASSIFICATION.drift_features}
    assert sum(summary["current"]["confidence"]["shares"]) == pytest.approx(1.0)
    assert set(summary["reference"]["classes"]) == set(entry.labels)
