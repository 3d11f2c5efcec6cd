"""Raw in-process benchmark: the reference every served figure is compared to.

Run: `make bench-raw` (or `.venv/bin/python -m bench.raw --help`). For each model family x
variant x backend x batch size it prints images/s and p50/p99 latency, then the INT8 / FP32
throughput ratio per backend and batch size, and the INT8 file size as a share of FP32.
FP32 and INT8 are timed in alternating rounds (median round), so a burst of other load on
this shared machine cannot favour one of them. Writes everything to JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pydantic import BaseModel

from bench.timing import Timing, time_interleaved
from runners.backends import BACKENDS, create_backend
from runners.repository import Repository
from runners.settings import REPO_ROOT, BackendSettings

log = logging.getLogger(__name__)


class Row(BaseModel):
    family: str
    variant: str
    backend: str
    timing: Timing


class Ratio(BaseModel):
    family: str
    backend: str
    batch_size: int
    int8_over_fp32: float


class Report(BaseModel):
    machine: str
    rows: list[Row]
    ratios: list[Ratio]
    int8_file_share: dict[str, float]


def run(
    repository: Path,
    *,
    families: list[str] | None,
    backends: list[str],
    batch_sizes: list[int],
    rounds: int,
    round_s: float,
) -> Report:
    from offline.card import describe_machine

    repo = Repository(repository)
    rows: list[Row] = []
    shares: dict[str, float] = {}
    for family, variants in sorted(repo.families().items()):
        if families and family not in families:
            continue
        if "fp32" in variants and "int8" in variants:
            shares[family] = (
                variants["int8"].onnx_path.stat().st_size
                / variants["fp32"].onnx_path.stat().st_size
            )
        unbatched = any(e.batching.max_batch_size == 0 for e in variants.values())
        for backend in backends:
            # Both variants loaded side by side and timed in alternating rounds, so the
            # INT8 / FP32 ratio is measured under the same conditions.
            engines = {}
            for variant, entry in sorted(variants.items()):
                engines[variant] = create_backend(backend, entry.onnx_path, BackendSettings())
                engines[variant].load()
            for size in [1] if unbatched else batch_sizes:
                timings = time_interleaved(engines, size, rounds=rounds, round_s=round_s)
                for variant, timing in timings.items():
                    log.info(
                        "%-12s %-5s %-11s batch %3d  %9.1f img/s  p50 %8.2f ms  p99 %8.2f ms",
                        family, variant, backend, size, timing.images_per_s,
                        timing.p50_ms, timing.p99_ms,
                    )  # fmt: skip
                    rows.append(Row(family=family, variant=variant, backend=backend, timing=timing))
    ratios = []
    index = {(r.family, r.variant, r.backend, r.timing.batch_size): r for r in rows}
    for (family, variant, backend, size), row in index.items():
        fp32 = index.get((family, "fp32", backend, size))
        if variant == "int8" and fp32 is not None:
            ratios.append(
                Ratio(
                    family=family,
                    backend=backend,
                    batch_size=size,
                    int8_over_fp32=row.timing.images_per_s / fp32.timing.images_per_s,
                )
            )
    return Report(machine=describe_machine(), rows=rows, ratios=ratios, int8_file_share=shares)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=REPO_ROOT / "model_repository")
    parser.add_argument("--family", action="append", help="only these families (repeatable)")
    parser.add_argument("--backend", action="append", choices=list(BACKENDS))
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per cell")
    parser.add_argument("--round-s", type=float, default=0.6, help="seconds per round")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "bench-raw.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    report = run(
        args.repository,
        families=args.family,
        backends=args.backend or list(BACKENDS),
        batch_sizes=[int(s) for s in args.batch_sizes.split(",")],
        rounds=args.rounds,
        round_s=args.round_s,
    )
    log.info("\nINT8 / FP32 throughput, same run (%s):", report.machine)
    for ratio in report.ratios:
        log.info(
            "  %-12s %-11s batch %3d  %5.2fx",
            ratio.family, ratio.backend, ratio.batch_size, ratio.int8_over_fp32,
        )  # fmt: skip
    for family, share in report.int8_file_share.items():
        log.info("  %-12s INT8 file = %.0f%% of FP32", family, share * 100)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report.model_dump_json(indent=2) + "\n")
    log.info("wrote %s", args.out)
    json.loads(args.out.read_text())  # what was written must parse
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
