"""How often drift checks cry wolf, and how surely they see a real shift.

    python -m bench.drift [--windows 100] [--rows 200] [--seed 1]

In process, against the committed digits model's drift reference (the held-out split sent
as PNG through the FP32 model): `--windows` windows of `--rows` held-out images each, drawn
without replacement within a window, compared with the reference exactly as the service's
check does (monitoring.drift.compare, Evidently); the share that drifted is the false-alarm
rate. Then one window of the same size of each real shift (inverted, rotated, blurred digits,
photo crops) and whether it drifted. Prints one JSON object.

The held-out windows come from the images the reference is made of: they measure the
sampling noise of a window, the noise the thresholds must stay above.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.shifts import SHIFTS, photos
from monitoring import drift
from offline.data import load_heldout
from runners.model import LoadedModel
from runners.repository import DRIFT_REFERENCE, read_model
from runners.settings import REPO_ROOT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drift", description=__doc__)
    parser.add_argument("--windows", type=int, default=100)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    entry = read_model(REPO_ROOT / "model_repository" / "digits_fp32")
    reference = json.loads((Path(entry.directory) / DRIFT_REFERENCE).read_text())
    model = LoadedModel.load(entry, warmup_batch_sizes=(1,))
    rng = np.random.default_rng(args.seed)
    started = time.monotonic()
    alarms = 0
    largest: dict[str, float] = {}
    for _ in range(args.windows):
        index = rng.choice(reference["count"], args.rows, replace=False)
        columns = reference["columns"].items()
        summary = drift.compare(entry, reference, {k: [v[i] for i in index] for k, v in columns})
        alarms += summary["drifted"]
        for feature in summary["features"]:
            ratio = feature["statistic"] / feature["threshold"]
            largest[feature["name"]] = max(largest.get(feature["name"], 0.0), ratio)
    images, _ = load_heldout()
    chosen = images[rng.choice(len(images), args.rows, replace=False)]
    shifted = {name: shift(chosen) for name, shift in SHIFTS.items()}
    shifted["photos"] = photos(args.rows, seed=args.seed)
    shifts = {}
    for name, pngs in shifted.items():
        current = drift.make_reference(entry, pngs, name, model)["columns"]
        summary = drift.compare(entry, reference, current)
        shifts[name] = {
            "drifted": summary["drifted"],
            "score": round(summary["score"], 2),
            "features": [f["name"] for f in summary["features"] if f["drifted"]],
        }
    sys.stdout.write(
        json.dumps(
            {
                "windows": args.windows,
                "rows_per_window": args.rows,
                "false_alarms": alarms,
                "false_alarm_rate": alarms / args.windows,
                "largest_statistic_over_threshold": {k: round(v, 3) for k, v in largest.items()},
                "shifts": shifts,
                "seconds": round(time.monotonic() - started, 1),
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
