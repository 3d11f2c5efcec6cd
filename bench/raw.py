"""Raw in-process benchmark: the reference every served figure is compared to.

Run: `make bench-raw` (or `.venv/bin/python -m bench.raw --help`). For each model family x
variant x backend x batch size it prints images/s and p50/p99 latency, then the INT8 / FP32
and BF16 / FP32 throughput ratios per backend and batch size, and the INT8 file size as a
share of FP32. BF16 is the FP32 file on OpenVINO with its BF16 hint, measured on every CPU
that has AMX-BF16 or AVX512-BF16 whether or not a bf16 variant was published (this is the
measurement that says whether it pays); ONNX Runtime has no BF16 mode on x86. The variants
of one backend are timed in alternating rounds (median round), so a burst of other load on
this shared machine cannot favour one of them. The CPU (model and the instruction sets
that decide speed) heads the output and the JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pydantic import BaseModel, Field

from bench.timing import Timing, time_interleaved
from runners.backends import BACKENDS, Backend, create_backend
from runners.precision import CpuInfo, this_cpu
from runners.repository import ModelEntry, Repository
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
    variant: str = Field(description="int8 or bf16, over FP32 on the same backend.")
    over_fp32: float


class Report(BaseModel):
    machine: str
    cpu: CpuInfo
    rows: list[Row]
    ratios: list[Ratio]
    int8_file_share: dict[str, float]
    bf16: str = Field(description="Measured, or why BF16 was not measured on this CPU.")


def _engines(variants: dict[str, ModelEntry], backend: str) -> dict[str, Backend]:
    """The family's variants on one backend, loaded side by side; BF16 from the FP32 file
    where this backend can run it here, published or not."""
    files = {variant: (entry.onnx_path, variant) for variant, entry in variants.items()}
    if "fp32" in variants:
        files.setdefault("bf16", (variants["fp32"].onnx_path, "bf16"))
    engines: dict[str, Backend] = {}
    for variant, (path, precision) in sorted(files.items()):
        if BACKENDS[backend].unsupported(precision) is not None:  # type: ignore[arg-type]
            continue
        engines[variant] = create_backend(backend, path, BackendSettings(), precision)  # type: ignore[arg-type]
        engines[variant].load()
    return engines


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
    from runners.backends.openvino_backend import OpenVINOBackend

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
            # The variants loaded side by side and timed in alternating rounds, so the
            # INT8 / FP32 and BF16 / FP32 ratios are measured under the same conditions.
            engines = _engines(variants, backend)
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
        if variant != "fp32" and fp32 is not None:
            ratios.append(
                Ratio(
                    family=family,
                    backend=backend,
                    batch_size=size,
                    variant=variant,
                    over_fp32=row.timing.images_per_s / fp32.timing.images_per_s,
                )
            )
    why_not = OpenVINOBackend.unsupported("bf16")
    return Report(
        machine=describe_machine(),
        cpu=this_cpu(),
        rows=rows,
        ratios=sorted(ratios, key=lambda r: (r.family, r.variant, r.backend, r.batch_size)),
        int8_file_share=shares,
        bf16="measured on OpenVINO" if why_not is None else f"not measured: {why_not}",
    )


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
    log.info("\nINT8 / FP32 and BF16 / FP32 throughput, same run (%s):", report.machine)
    for ratio in report.ratios:
        log.info(
            "  %-12s %-4s / fp32  %-11s batch %3d  %5.2fx",
            ratio.family, ratio.variant, ratio.backend, ratio.batch_size, ratio.over_fp32,
        )  # fmt: skip
    log.info("  BF16: %s", report.bf16)
    for family, share in report.int8_file_share.items():
        log.info("  %-12s INT8 file = %.0f%% of FP32", family, share * 100)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report.model_dump_json(indent=2) + "\n")
    log.info("wrote %s", args.out)
    json.loads(args.out.read_text())  # what was written must parse
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
