"""Served throughput, side by side: the BentoML service against its floor and a plain baseline.

Run: `make bench-serve` (or `.venv/bin/python -m bench.serve --help`). In one run, on free
loopback ports, it starts:

- the BentoML service (`service:ImageClassifier`, as `make serve` runs it);
- BentoML's floor: a trivial endpoint with no model (`bench.trivial_service`);
- the plain baseline: FastAPI + ONNX Runtime, one request one inference (`bench.baseline`);
- Triton (`python -m triton_server`), over HTTP and gRPC (KServe v2), in both modes: native,
  the default (batches run in tritonserver's Python backend stubs, `triton_server.native`),
  and PyTriton (batches run in the launcher, behind PyTriton's proxy).

Every contender gets the same Locust load (`--users` users, held-out digits as PNG) in
alternating rounds, and each figure is the median round, so a burst of other load on this
shared machine cannot favour one of them. Locust runs on the same cores as the servers; its
CPU time is reported. The ratios the serving issues target are printed with their targets,
whether met or not, and everything is written to JSON. With the ResNet-50 load profile in
the repository (`make profiles`), served INT8 and FP32 images/s (through the service, and
through Triton) are compared with the raw in-process figure of the same variant and backend
(for Triton, at the mean batch size its dynamic batcher formed in the first round, from its
own counters), the raw figures timed in rounds between the served ones. With the digit
detector in the repository (committed), its FP32 and INT8 variants are served to Locust's
detection user.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import BaseModel

from bench import servers
from bench.locust_run import LoadResult, run_locust
from bench.timing import time_backend
from runners.backends import create_backend
from runners.repository import Repository
from runners.settings import REPO_ROOT, BackendSettings

log = logging.getLogger(__name__)

PROFILE = "resnet50"
DETECTOR = "detector"  # the committed digit detector: its served images/s beside the rest
BATCH_IMAGES = 16
TRITON_PREFIX = "triton http "  # a load profile's cells through Triton: "triton http resnet50 int8"


@dataclass(frozen=True)
class Contender:
    name: str
    server: str
    user: str
    options: tuple[str, ...] = ()
    images_per_request: int = 1


class Cell(BaseModel):
    name: str
    user: str
    images_per_request: int
    rounds: list[LoadResult]
    requests_per_s: float
    images_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    shed: int
    wrong_labels: int


class Target(BaseModel):
    what: str
    value: float
    target: str
    met: bool


class Report(BaseModel):
    machine: str
    users: int
    round_s: float
    rounds: int
    cells: list[Cell]
    raw_images_per_s: dict[str, float]
    triton_batch_size: dict[str, float] = {}  # per Triton cell of a load profile
    cold_start_s: dict[str, float]
    rss_mb: dict[str, dict[str, float]]
    server_cpu_s: dict[str, float]
    # Per cell: its server's CPU time (the kernel's, whole process tree) per request answered.
    server_cpu_ms_per_request: dict[str, float] = {}
    generator_cpu_share: float
    targets: list[Target]


def contenders(
    profiles: bool, triton_grpc: str, detector: bool = False, pytriton_grpc: str | None = None
) -> list[Contender]:
    found = [
        Contender("service", "service", "UploadUser"),
        Contender("service (raw body)", "service", "DigitUser"),
        Contender("bentoml trivial", "trivial", "UploadUser"),
        Contender("plain baseline", "baseline", "UploadUser"),
        Contender("triton http", "triton", "TritonHttpUser"),
        Contender("triton grpc", "triton", "TritonGrpcUser", ("--grpc", triton_grpc)),
        *(
            [
                Contender("triton pytriton http", "triton-pytriton", "TritonHttpUser"),
                Contender(
                    "triton pytriton grpc",
                    "triton-pytriton",
                    "TritonGrpcUser",
                    ("--grpc", pytriton_grpc),
                ),
            ]
            if pytriton_grpc
            else []
        ),
        Contender(
            "service batch",
            "service",
            "DigitBatchUser",
            ("--images-per-request", str(BATCH_IMAGES)),
            BATCH_IMAGES,
        ),
    ]
    if profiles:
        found += [
            Contender(
                f"{PROFILE} {v}", "service", "PhotoUser", ("--model", PROFILE, "--variant", v)
            )
            for v in ("fp32", "int8")
        ]
        found += [
            Contender(
                f"{TRITON_PREFIX}{PROFILE} {v}",
                "triton",
                "TritonHttpUser",
                ("--model", PROFILE, "--variant", v),
            )
            for v in ("fp32", "int8")
        ]
    if detector:
        found += [
            Contender(
                f"{DETECTOR} {v}", "service", "DetectionUser", ("--model", DETECTOR, "--variant", v)
            )
            for v in ("fp32", "int8")
        ]
    return found


def cell(contender: Contender, rounds: list[LoadResult]) -> Cell:
    rps = statistics.median(r.requests_per_s for r in rounds)
    # Images answered, not sent: a shed or failed batch request classified none of its images.
    answered = statistics.median(
        r.requests_per_s * (r.requests - r.failures) / max(1, r.requests) for r in rounds
    )
    return Cell(
        name=contender.name,
        user=contender.user,
        images_per_request=contender.images_per_request,
        rounds=rounds,
        requests_per_s=rps,
        images_per_s=answered * contender.images_per_request,
        p50_ms=statistics.median(r.p50_ms for r in rounds),
        p99_ms=statistics.median(r.p99_ms for r in rounds),
        errors=sum(r.errors for r in rounds),
        shed=sum(r.shed for r in rounds),
        wrong_labels=sum(r.wrong_labels for r in rounds),
    )


class RawFigures:
    """The raw in-process images/s of the profile's variants, on the backend the servers
    pick, timed in rounds between the served rounds (the servers idle meanwhile): per cell
    name, its variant at its batch size (the service's 32, Triton's what its batcher formed)."""

    def __init__(self, repository: Path, cells: dict[str, tuple[str, int]]) -> None:
        settings = BackendSettings()
        entries = Repository(repository).families()[PROFILE]
        self.cells = cells
        self.backends = {}
        for variant in sorted({variant for variant, _ in cells.values()}):
            entry = entries[variant]
            self.backends[variant] = create_backend(
                settings.backend or entry.preferred_backend, entry.onnx_path, settings
            )
            self.backends[variant].load()
        self.rounds: dict[str, list[float]] = {name: [] for name in cells}

    def time_round(self) -> None:
        for name, (variant, batch_size) in self.cells.items():
            timing = time_backend(self.backends[variant], batch_size, duration_s=2.0)
            self.rounds[name].append(timing.images_per_s)
            log.info("raw      %-30s %8.1f images/s at batch %d", name, timing.images_per_s,
                     batch_size)  # fmt: skip

    def medians(self) -> dict[str, float]:
        return {name: statistics.median(found) for name, found in self.rounds.items() if found}


def triton_batches(server: servers.Server) -> dict[str, float]:
    """Per Triton cell of the load profile, the mean batch size its batcher has formed."""
    models = {f"{TRITON_PREFIX}{PROFILE} {v}": f"{PROFILE}_{v}" for v in ("fp32", "int8")}
    sizes = batch_sizes(httpx.get(server.extra["metrics"]).text, list(models.values()))
    return {cell: sizes[model] for cell, model in models.items() if model in sizes}


def batch_sizes(metrics_text: str, models: list[str]) -> dict[str, float]:
    """The mean batch size Triton's dynamic batcher formed per model, from its own counters
    (images inferred / batches executed)."""
    found = {}
    for model in models:
        counts = [
            sum(
                float(value)
                for value in re.findall(
                    rf'^nv_inference_{kind}\{{model="{model}",version="[^"]*"\}} (\S+)',
                    metrics_text,
                    flags=re.MULTILINE,
                )
            )
            for kind in ("count", "exec_count")
        ]
        if counts[1]:
            found[model] = counts[0] / counts[1]
    return found


def targets(report: Report) -> list[Target]:
    cells = {c.name: c for c in report.cells}
    found: list[Target] = []

    def ratio(what: str, top: str, bottom: str, target: float) -> None:
        if top in cells and bottom in cells:
            value = cells[top].images_per_s / cells[bottom].images_per_s
            found.append(Target(what=what, value=value, target=f">= {target}", met=value >= target))

    service = cells["service"]
    ratio("service / bentoml trivial (req/s)", "service", "bentoml trivial", 0.90)
    ratio("service / plain baseline (req/s)", "service", "plain baseline", 1.0)
    found.append(Target(what="service p99 ms", value=service.p99_ms, target="<= 50",
                        met=service.p99_ms <= 50))  # fmt: skip
    found.append(Target(what="service errors", value=service.errors, target="== 0",
                        met=service.errors == 0))  # fmt: skip
    ratio("batch endpoint / single (images/s)", "service batch", "service", 8.0)
    fronts = ("service", "service (raw body)", "triton http", "triton grpc",
              "triton pytriton http", "triton pytriton grpc")  # fmt: skip
    best = max((cells[c] for c in fronts if c in cells), key=lambda c: c.requests_per_s)
    ratio(f"best front end ({best.name}) / plain baseline", best.name, "plain baseline", 2.0)
    for protocol in ("http", "grpc"):
        native = f"triton {protocol}"
        ratio(f"{native} / plain baseline (req/s)", native, "plain baseline", 1.0)
        ratio(f"{native} / service (req/s)", native, "service", 0.9)
        ratio(f"{native} / {native} through PyTriton", native, f"triton pytriton {protocol}", 1.0)
    for name, raw in report.raw_images_per_s.items():
        if name in cells:
            value = cells[name].images_per_s / raw
            batch = report.triton_batch_size.get(name)
            at = f" at batch {round(batch)}" if batch else " at batch 32"
            found.append(Target(what=f"{name} served / raw in-process{at}", value=value,
                                target=">= 0.9", met=value >= 0.9))  # fmt: skip
    ratio(f"{PROFILE} int8 / fp32 served", f"{PROFILE} int8", f"{PROFILE} fp32", 1.8)
    cold = report.cold_start_s.get("service (default model only)", report.cold_start_s["service"])
    found.append(Target(what="service cold start to ready (s)", value=cold, target="<= 10",
                        met=cold <= 10))  # fmt: skip
    return found


def run(args: argparse.Namespace, work: Path) -> Report:
    from offline.card import describe_machine

    repository: Path = args.repository
    served = Repository(repository).families()
    profiles = not args.quick and PROFILE in served
    detector = not args.quick and DETECTOR in served
    families = ["digits", *([PROFILE] if profiles else []), *([DETECTOR] if detector else [])]
    env = {"IMGSERVE_REPOSITORY": str(repository), "IMGSERVE_MODELS": json.dumps(families)}

    def own(name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        """A server's environment: its prediction log and registry in the benchmark's own
        folder (the benchmark's traffic stays out of the project's data), and no periodic
        drift check (a check takes seconds of CPU from whichever round it lands in)."""
        data = {"IMGSERVE_DATA_DIR": str(work / "data" / name), "IMGSERVE_DRIFT_INTERVAL_S": "0"}
        return {**data, **(extra or {})}

    started: dict[str, servers.Server] = {}
    launchers: dict[str, Callable[[], servers.Server]] = {
        "service": lambda: servers.bentoml(
            "service:ImageClassifier", work / "service.log", own("service", env)
        ),
        "trivial": lambda: servers.bentoml(
            "bench.trivial_service:Trivial", work / "trivial.log", own("trivial"), name="trivial"
        ),
        "baseline": lambda: servers.baseline(
            repository / "digits_fp32", work / "baseline.log", env=own("baseline")
        ),
        "triton": lambda: servers.triton(
            repository,
            ["digits", *([PROFILE] if profiles else [])],
            work / "triton.log",
            env=own("triton"),
        ),
        "triton-pytriton": lambda: servers.triton(
            repository,
            ["digits"],
            work / "triton-pytriton.log",
            name="triton-pytriton",
            env=own("triton-pytriton", {"IMGSERVE_TRITON_MODE": "pytriton"}),
        ),
    }
    if profiles:  # the cold-start target is the default model's: time that one alone too
        alone = servers.bentoml("service:ImageClassifier", work / "alone.log",
                                own("alone", {"IMGSERVE_REPOSITORY": str(repository)}))  # fmt: skip
        servers.stop(alone)
        cold_default = alone.ready_after_s
    try:
        for name, launch in launchers.items():
            started[name] = launch()
            log.info("%-9s ready in %5.1f s at %s", name, started[name].ready_after_s,
                     started[name].url)  # fmt: skip
        report = measure(args, work, started, profiles, describe_machine(), detector=detector)
    finally:
        for server in started.values():
            servers.stop(server)
    if profiles:
        report.cold_start_s["service (default model only)"] = cold_default
    report.targets = targets(report)
    return report


def measure(
    args: argparse.Namespace,
    work: Path,
    started: dict[str, servers.Server],
    profiles: bool,
    machine: str,
    *,
    detector: bool = False,
) -> Report:
    proxied = started.get("triton-pytriton")
    proxied_grpc = proxied.extra["grpc"] if proxied else None
    chosen = contenders(profiles, started["triton"].extra["grpc"], detector, proxied_grpc)
    idle_rss = {name: s.rss_mb() for name, s in started.items()}
    for contender in chosen:  # warm-up: connection pools, lazy imports, first batches
        run_locust(started[contender.server].url, contender.user, args.users, 2.0,
                   work / "warmup" / contender.user, contender.options)  # fmt: skip
    results: dict[str, list[LoadResult]] = {c.name: [] for c in chosen}
    cpu_before = {name: s.cpu_seconds() for name, s in started.items()}
    cell_cpu = dict.fromkeys(results, 0.0)  # each cell's server CPU seconds, over its rounds
    generator_cpu = 0.0
    raw: RawFigures | None = None
    formed: dict[str, float] = {}
    for number in range(args.rounds):
        for contender in chosen:
            prefix = work / f"round{number}" / contender.name.replace(" ", "_")
            server = started[contender.server]
            quiet(started)
            before = server.cpu_seconds()
            result = run_locust(
                server.url, contender.user, args.users, args.round_s, prefix, contender.options
            )
            cell_cpu[contender.name] += server.cpu_seconds() - before
            if result.errors:  # what failed: the run's folder is gone after the benchmark
                for failures in prefix.parent.glob(prefix.name + "*_failures.csv"):
                    log.warning("%s failures:\n%s", contender.name, failures.read_text())
                server_log = started[contender.server].log.read_text(errors="replace")
                refused = [line for line in server_log.splitlines() if "refused" in line]
                shown = "".join(f"\n  {line}" for line in refused[-5:])
                log.warning("%s: the server logged %d refusals%s", contender.name, len(refused),
                            shown)  # fmt: skip
            generator_cpu += result.generator_cpu_s
            results[contender.name].append(result)
            log.info(
                "round %d  %-22s %8.1f req/s  p50 %6.1f ms  p99 %6.1f ms  errors %d  shed %d",
                number + 1, contender.name, result.requests_per_s, result.p50_ms,
                result.p99_ms, result.errors, result.shed,
            )  # fmt: skip
        if profiles:  # the raw figures, side by side with the served ones
            if raw is None:  # the batch size Triton's batcher formed in the first round
                formed = triton_batches(started["triton"])
                raw = RawFigures(args.repository, {
                    **{f"{PROFILE} {v}": (v, 32) for v in ("fp32", "int8")},
                    **{cell: (cell.rsplit(" ", 1)[1], max(1, round(size)))
                       for cell, size in formed.items()},
                })  # fmt: skip
            quiet(started)
            raw.time_round()
    server_cpu = {name: s.cpu_seconds() - cpu_before[name] for name, s in started.items()}
    requests = {name: sum(r.requests for r in found) for name, found in results.items()}
    loaded_rss = {name: s.rss_mb() for name, s in started.items()}
    busy = args.rounds * args.round_s * len(chosen)
    return Report(
        machine=machine,
        users=args.users,
        round_s=args.round_s,
        rounds=args.rounds,
        cells=[cell(c, results[c.name]) for c in chosen],
        raw_images_per_s=raw.medians() if raw is not None else {},
        triton_batch_size=formed,
        cold_start_s={name: s.ready_after_s for name, s in started.items()},
        rss_mb={
            f"{name} {when}": rss
            for name in started
            for when, rss in (("idle", idle_rss[name]), ("after load", loaded_rss[name]))
        },
        server_cpu_s=server_cpu,
        server_cpu_ms_per_request={
            name: 1000 * cell_cpu[name] / requests[name] for name in results if requests[name]
        },
        generator_cpu_share=generator_cpu / busy,
        targets=[],
    )


def quiet(started: dict[str, servers.Server]) -> None:
    """Let every server finish the requests the last round left queued."""
    waited = servers.wait_quiet(started.values())
    if waited > 0.5:
        log.info("  waited %.1f s for the servers to finish the last round's work", waited)


def show(report: Report) -> None:
    log.info("\n%s; %d users, %d rounds of %.0f s, median round:", report.machine,
             report.users, report.rounds, report.round_s)  # fmt: skip
    log.info("  %-22s %10s %10s %8s %8s %7s %5s", "front end", "req/s", "images/s", "p50 ms",
             "p99 ms", "errors", "shed")  # fmt: skip
    for c in report.cells:
        log.info("  %-22s %10.1f %10.1f %8.1f %8.1f %7d %5d", c.name, c.requests_per_s,
                 c.images_per_s, c.p50_ms, c.p99_ms, c.errors, c.shed)  # fmt: skip
    log.info("  Locust used %.0f%% of one core while it ran (same machine).",
             100 * report.generator_cpu_share)  # fmt: skip
    for name, seconds in report.cold_start_s.items():
        log.info("  cold start to ready: %-9s %5.1f s", name, seconds)
    for name, rss in report.rss_mb.items():
        parts = ", ".join(f"{proc.split(':', 1)[1]} {mb:.0f}" for proc, mb in rss.items())
        log.info("  resident MB, %-20s total %6.0f  (%s)", name, sum(rss.values()), parts)
    for name, ms in report.server_cpu_ms_per_request.items():
        log.info("  server CPU per request, %-26s %7.2f ms", name, ms)
    for name, raw in report.raw_images_per_s.items():
        batch = round(report.triton_batch_size.get(name, 32))
        log.info("  raw in-process %-26s %8.1f images/s (batch %d)", name, raw, batch)
    log.info("\nTargets:")
    for t in report.targets:
        log.info("  %-45s %9.2f  target %-6s %s", t.what, t.value, t.target,
                 "met" if t.met else "NOT MET")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=REPO_ROOT / "model_repository")
    parser.add_argument("--users", type=int, default=32, help="concurrent Locust users")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--round-s", type=float, default=10.0, help="seconds per round")
    parser.add_argument("--quick", action="store_true", help="default model only")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "bench-serve.json")
    args = parser.parse_args(argv)
    args.repository = args.repository.resolve()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness poll
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as work:
        report = run(args, Path(work))
    show(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report.model_dump_json(indent=2) + "\n")
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
