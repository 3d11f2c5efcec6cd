"""Evidently, behind one function: the only module that imports it (and pandas with it).

Both are heavy imports (slow to import, large in memory): they are loaded by the drift command
(`python -m monitoring drift`), which the service runs as a subprocess, never by a serving
worker.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runners.tasks.base import DriftFeature


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's test: its statistic, the threshold, and whether it drifted."""

    name: str
    test: str
    statistic: float
    threshold: float
    drifted: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "test": self.test,
            "statistic": self.statistic,
            "threshold": self.threshold,
            "drifted": self.drifted,
        }


def compare(
    reference: Mapping[str, Sequence[Any]],
    current: Mapping[str, Sequence[Any]],
    features: Sequence[DriftFeature],
    html: Path | None = None,
) -> list[FeatureDrift]:
    """Each feature's drift of `current` from `reference` (columns by name), with Evidently's
    DataDriftPreset and each feature's own test and threshold; its HTML report to `html`."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    names = [feature.name for feature in features]
    definition = DataDefinition(
        numerical_columns=[f.name for f in features if f.kind == "numerical"],
        categorical_columns=[f.name for f in features if f.kind == "categorical"],
    )

    def dataset(columns: Mapping[str, Sequence[Any]]) -> Any:
        frame = pd.DataFrame({name: list(columns[name]) for name in names})
        for feature in features:
            if feature.kind == "categorical":
                frame[feature.name] = frame[feature.name].astype(str)
            else:
                frame[feature.name] = frame[feature.name].astype(float)
        return Dataset.from_pandas(frame, data_definition=definition)

    report = Report(
        [
            DataDriftPreset(
                columns=names,
                per_column_method={f.name: f.test for f in features},
                per_column_threshold={f.name: f.threshold for f in features},
                # One drifted feature is drift: a rotation moves the classes, not the pixels.
                drift_share=1 / (2 * len(features)),
            )
        ]
    )
    with warnings.catch_warnings():
        # A constant reference column (every image 28 wide) makes its histogram divide by zero.
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = report.run(current_data=dataset(current), reference_data=dataset(reference))
    values: dict[str, float] = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config") or {}
        if config.get("type") == "evidently:metric_v2:ValueDrift":
            values[config["column"]] = float(metric["value"])
    if html is not None:
        snapshot.save_html(str(html))
    # PSI and the normed Wasserstein distance are distances: Evidently calls a value at or
    # above the threshold drift.
    return [
        FeatureDrift(f.name, f.test, values[f.name], f.threshold, values[f.name] >= f.threshold)
        for f in features
    ]
