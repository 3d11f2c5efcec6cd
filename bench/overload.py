"""Overload, measured: the BentoML service at 2-3x its capacity, fixed limit vs latency bound.

Run: `make bench-overload` (or `.venv/bin/python -m bench.overload --help`). In one run, on
free loopback ports, it starts the BentoML service twice (digits, the default model):

- `before`: the fixed admission bound, a count of requests per entry worker
  (`IMGSERVE_LATENCY_TARGET_MS=0`, `max_concurrent_requests` 1024 unless `--fixed-limit`),
  refused at admission (`IMGSERVE_EARLY_SHEDDING=false`);
- `now`: the default settings: the latency bound (`serving.admission`: answers/s x target / 2
  under a standing queue, target 100 ms, floor 64) and refusal before BentoML's stack
  (`serving.shedding`);
- `early` (on request, `--modes before,early,now`): the fixed count, refused early.

In alternating rounds each gets the same three loads from `bench.loadgen` (pre-encoded PNG
digits on kept-alive connections, a generator far cheaper per request than the server):
capacity, measured as the closed-loop throughput of `--clients` clients; overload, an open
loop at `--factor` x that capacity for `--seconds`; recovery, an open loop at 30% of it.
For the overload it prints the offered rate against capacity, accepted throughput, the shed
ratio, accepted p50/p99 as the client saw them and as the service's own histogram
(`imgserve_request_duration_ms`, read from /metrics before and after) recorded them, the
sheds the service counted (outcome="shed"), the admission limit at the end, and the CPU the
generator and the server used: on two cores the generator takes CPU from the server, and a
client-side p99 includes the generator's own scheduling delay. Each figure is the median
round; the target (50 ms, the alert threshold) is printed with met or NOT MET.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
from pydantic import BaseModel

from bench import loadgen, servers
from runners.settings import REPO_ROOT

log = logging.getLogger(__name__)

TARGET_MS = 50.0  # the digits model's p99 target: prometheus/rules/alerts.yml
RECOVERY_FRACTION = 0.3
SHED = (429, 503)
DURATION = "imgserve_request_duration_ms_bucket"
SELECT = ('model="digits"', 'variant="fp32"', 'endpoint="classify"')


@dataclass(frozen=True)
class Mode:
    name: str
    env: dict[str, str]


class Round(BaseModel):
    mode: str
    capacity_per_s: float
    offered_per_s: float
    offered_x: float
    not_sent: int
    generator_late_p99_ms: float
    accepted_per_s: float
    shed: int
    shed_ratio: float
    other_statuses: dict[str, int]
    wrong_labels: int
    retry_after_missing: int
    client_p50_ms: float
    client_p99_ms: float
    shed_p99_ms: float
    server_p50_ms: float
    server_p99_ms: float
    server_counted_shed: int
    admission_limit_at_end: float
    generator_cores: float
    server_cores: float
    recovery_per_s: float
    recovery_statuses: dict[str, int]


class Summary(BaseModel):
    mode: str
    rounds: list[Round]
    median: dict[str, float]
    target_ms: float
    server_p99_met: bool
    client_p99_met: bool
    recovered: bool


class Report(BaseModel):
    machine: str
    factor: float
    seconds: float
    summaries: list[Summary]
    ratios: dict[str, float]


def digits(count: int = 64) -> tuple[list[bytes], list[str]]:
    """Held-out digits as PNG, and the unbatched in-process answer for each."""
    from offline.data import load_heldout
    from offline.digits import encode_png
    from runners.model import LoadedModel
    from runners.preprocessing import decode_and_preprocess
    from runners.repository import Repository
    from runners.tasks.classification import top1_labels

    pngs = [encode_png(image) for image in load_heldout()[0][:count]]
    model = LoadedModel.load(Repository(REPO_ROOT / "model_repository").get("digits", "fp32"))
    labels = []
    for png in pngs:
        sample = decode_and_preprocess(png, model.entry.preprocess)
        labels += top1_labels(model, sample[np.newaxis])
    return pngs, labels


def histogram(text: str, name: str = DURATION) -> dict[float, float]:
    """Cumulative bucket counts of one histogram, summed over the series SELECT matches."""
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{") and all(s in line for s in SELECT):
            labels, value = line.rsplit(" ", 1)
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + float(value)
    return buckets


def quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """Prometheus' histogram_quantile over the counts added between two scrapes."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return float("nan")
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower


def counter(text: str, prefix: str, *needles: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix) and all(n in line for n in needles)
    )


def percentile_ms(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if len(values) else float("nan")


def statuses(answers: Sequence[loadgen.Answer]) -> dict[str, int]:
    found: dict[str, int] = {}
    for a in answers:
        key = str(a.status) if a.status is not None else "no answer"
        found[key] = found.get(key, 0) + 1
    return found


def one_round(server: servers.Server, mode: str, args: argparse.Namespace,
              images: tuple[list[bytes], list[str]]) -> Round:  # fmt: skip
    pngs, labels = images
    host, port = server.url.removeprefix("http://").split(":")
    requests = [
        loadgen.request_bytes("/v1/classify?variant=fp32", f"{host}:{port}", "image/png", png)
        for png in pngs
    ]
    measured = loadgen.closed_loop(host, int(port), requests, args.clients, args.capacity_s)
    capacity = len(measured.answers) / measured.seconds
    time.sleep(1.0)

    metrics_url = f"{server.url}/metrics"
    before = httpx.get(metrics_url, timeout=10).text
    me = psutil.Process()
    generator_before = sum(me.cpu_times()[:2])
    server_before = server.cpu_seconds()
    wall = time.perf_counter()
    load = loadgen.open_loop(host, int(port), requests, args.factor * capacity, args.seconds)
    wall = time.perf_counter() - wall
    generator_cores = (sum(me.cpu_times()[:2]) - generator_before) / wall
    server_cores = (server.cpu_seconds() - server_before) / wall
    after = httpx.get(metrics_url, timeout=10).text

    accepted = [a for a in load.answers if a.status == 200]
    shed = [a for a in load.answers if a.status in SHED]
    wrong = sum(json.loads(a.body)["predictions"][0]["label"] != labels[a.image] for a in accepted)
    shed_counted = counter(after, "imgserve_requests_total{", 'outcome="shed"') - counter(
        before, "imgserve_requests_total{", 'outcome="shed"'
    )
    time.sleep(1.0)
    recovery = loadgen.open_loop(host, int(port), requests, RECOVERY_FRACTION * capacity, 3.0)
    answered = len(load.answers) or 1
    return Round(
        mode=mode,
        capacity_per_s=capacity,
        offered_per_s=load.offered_per_s,
        offered_x=load.offered_per_s / capacity,
        not_sent=load.not_sent,
        generator_late_p99_ms=load.late_p99_s * 1000,
        accepted_per_s=len(accepted) / load.seconds,
        shed=len(shed),
        shed_ratio=len(shed) / answered,
        other_statuses={
            k: v for k, v in statuses(load.answers).items() if k not in {"200", "429", "503"}
        },
        wrong_labels=int(wrong),
        retry_after_missing=sum(1 for a in shed if not a.retry_after),
        client_p50_ms=percentile_ms([a.latency_s for a in accepted], 50),
        client_p99_ms=percentile_ms([a.latency_s for a in accepted], 99),
        shed_p99_ms=percentile_ms([a.latency_s for a in shed], 99),
        server_p50_ms=quantile(0.5, histogram(before), histogram(after)),
        server_p99_ms=quantile(0.99, histogram(before), histogram(after)),
        server_counted_shed=int(shed_counted),
        admission_limit_at_end=counter(after, "imgserve_admission_limit "),
        generator_cores=generator_cores,
        server_cores=server_cores,
        recovery_per_s=recovery.offered_per_s,
        recovery_statuses=statuses(recovery.answers),
    )


MEDIAN_FIELDS = (
    "capacity_per_s", "offered_per_s", "offered_x", "accepted_per_s", "shed_ratio",
    "client_p50_ms", "client_p99_ms", "shed_p99_ms", "server_p50_ms", "server_p99_ms",
    "admission_limit_at_end", "generator_cores", "server_cores", "generator_late_p99_ms",
)  # fmt: skip


def summarise(mode: str, rounds: list[Round]) -> Summary:
    median = {f: statistics.median(getattr(r, f) for r in rounds) for f in MEDIAN_FIELDS}
    recovered = all(set(r.recovery_statuses) == {"200"} for r in rounds)
    return Summary(
        mode=mode,
        rounds=rounds,
        median=median,
        target_ms=TARGET_MS,
        server_p99_met=median["server_p99_ms"] <= TARGET_MS,
        client_p99_met=median["client_p99_ms"] <= TARGET_MS,
        recovered=recovered,
    )


def run(args: argparse.Namespace, work: Path) -> Report:
    from offline.card import describe_machine

    fixed = {
        "IMGSERVE_LATENCY_TARGET_MS": "0",
        "IMGSERVE_MAX_CONCURRENT_REQUESTS": str(args.fixed_limit),
    }
    known = {
        "before": Mode(f"fixed {args.fixed_limit}", {**fixed, "IMGSERVE_EARLY_SHEDDING": "false"}),
        "early": Mode(f"fixed {args.fixed_limit}+early", fixed),
        "now": Mode("latency bound", {}),
    }
    modes = [known[name] for name in args.modes.split(",")]
    images = digits()
    started: dict[str, servers.Server] = {}
    rounds: dict[str, list[Round]] = {m.name: [] for m in modes}
    try:
        for mode in modes:
            name = mode.name.replace(" ", "_")
            # A home each: a BentoML server clears the metrics folder under its home as it
            # starts, which would blank the other server's histograms.
            home = work / f"{name}-home"
            home.mkdir()
            started[mode.name] = servers.bentoml(
                "service:ImageClassifier", work / f"{name}.log",
                {**mode.env, "BENTOML_HOME": str(home)}, name=name,
            )  # fmt: skip
        for number in range(args.rounds):
            for mode in modes:
                result = one_round(started[mode.name], mode.name, args, images)
                rounds[mode.name].append(result)
                log.info(
                    "round %d %-14s capacity %5.0f/s  offered %5.0f/s (%.1fx)  accepted %5.0f/s"
                    "  shed %3.0f%%  p99 client %6.1f ms, server %6.1f ms  limit %4.0f",
                    number + 1, mode.name, result.capacity_per_s, result.offered_per_s,
                    result.offered_x, result.accepted_per_s, 100 * result.shed_ratio,
                    result.client_p99_ms, result.server_p99_ms, result.admission_limit_at_end,
                )  # fmt: skip
    finally:
        for server in started.values():
            servers.stop(server)
    summaries = [summarise(m.name, rounds[m.name]) for m in modes]
    before, now = summaries[0].median, summaries[-1].median
    ratios = {
        f"{key} now / before": now[key] / before[key]
        for key in ("server_p99_ms", "client_p99_ms", "accepted_per_s")
        if before[key]
    }
    return Report(machine=describe_machine(), factor=args.factor, seconds=args.seconds,
                  summaries=summaries, ratios=ratios)  # fmt: skip


def show(report: Report) -> None:
    log.info("\n%s; overload %.1fx capacity for %.0f s, median of %d rounds:", report.machine,
             report.factor, report.seconds, len(report.summaries[0].rounds))  # fmt: skip
    rows = (
        ("capacity (closed loop), req/s", "capacity_per_s", "%.0f"),
        ("offered, req/s", "offered_per_s", "%.0f"),
        ("offered / capacity", "offered_x", "%.2f"),
        ("accepted, req/s", "accepted_per_s", "%.0f"),
        ("shed ratio", "shed_ratio", "%.2f"),
        ("accepted p50, client, ms", "client_p50_ms", "%.1f"),
        ("accepted p99, client, ms", "client_p99_ms", "%.1f"),
        ("accepted p50, server histogram, ms", "server_p50_ms", "%.1f"),
        ("accepted p99, server histogram, ms", "server_p99_ms", "%.1f"),
        ("shed p99, client, ms", "shed_p99_ms", "%.1f"),
        ("admission limit at the end", "admission_limit_at_end", "%.0f"),
        ("generator CPU, cores", "generator_cores", "%.2f"),
        ("server CPU, cores", "server_cores", "%.2f"),
        ("generator lateness p99, ms", "generator_late_p99_ms", "%.1f"),
    )
    log.info("  %-38s" + " %16s" * len(report.summaries), "", *(s.mode for s in report.summaries))
    for title, key, fmt in rows:
        values = " ".join(f"{fmt % s.median[key]:>16}" for s in report.summaries)
        log.info("  %-38s %s", title, values)
    for s in report.summaries:
        other: dict[str, int] = {}
        for r in s.rounds:
            for status, n in r.other_statuses.items():
                other[status] = other.get(status, 0) + n
        log.info(
            "  %s: other statuses %s, wrong labels %d, 429 without Retry-After %d, sheds the "
            "service counted %d of %d; recovery at %.0f%% of capacity: %s",
            s.mode, other or "none", sum(r.wrong_labels for r in s.rounds),
            sum(r.retry_after_missing for r in s.rounds),
            sum(r.server_counted_shed for r in s.rounds), sum(r.shed for r in s.rounds),
            100 * RECOVERY_FRACTION,
            [r.recovery_statuses for r in s.rounds],
        )  # fmt: skip
    log.info("\nTarget: accepted p99 <= %.0f ms", TARGET_MS)
    for s in report.summaries:
        log.info("  %-14s server-side %6.1f ms %-8s client-side %6.1f ms %-8s recovered: %s",
                 s.mode, s.median["server_p99_ms"], "met" if s.server_p99_met else "NOT MET",
                 s.median["client_p99_ms"], "met" if s.client_p99_met else "NOT MET",
                 "yes" if s.recovered else "NO")  # fmt: skip
    for what, value in report.ratios.items():
        log.info("  %-36s %.2f", what, value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", type=float, default=2.5, help="offered load / capacity")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of the overload")
    parser.add_argument("--capacity-s", type=float, default=4.0, help="length of the capacity run")
    parser.add_argument("--clients", type=int, default=16, help="closed-loop clients (capacity)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--fixed-limit", type=int, default=1024,
                        help="max_concurrent_requests of the fixed-limit servers")  # fmt: skip
    parser.add_argument(
        "--modes",
        default="before,now",
        help="servers, in order (the ratios compare the first and the last): before (fixed "
        "limit, shed at admission), early (fixed limit, shed before BentoML's stack), now "
        "(the defaults: latency bound, early)",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "bench-overload.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as work:
        report = run(args, Path(work))
    show(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report.model_dump_json(indent=2) + "\n")
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
