"""Soak: the BentoML service at 70% of its capacity for a long while (`make soak`).

    .venv/bin/python -m load_tests.soak                      # 30 minutes, capacity measured
    .venv/bin/python -m load_tests.soak --duration 120 --capacity-rps 300

It starts the service (`bench.servers`), takes its capacity (`--capacity-rps`, or a short
step load read the way `make compare` reads it: the best step within the model's p99 target
with no error), warms up, then offers a constant arrival rate of `--load-fraction` (0.7) of
that capacity with Locust (`load_tests/locustfile.py --shape rate`, `DigitUser`) in windows
of `--window-s`, all in one Locust run (the load has no gap between windows). For every
window it records the throughput, p50/p99, failures, and the resident memory of the server's
whole process tree (psutil), sampled every few seconds throughout. Pass criteria, each
printed with its figure:

- error ratio 0: no failed request of any kind (a shed 429/503 counts: 70% is below capacity);
- p99 stable: the median p99 of the later half of the windows is at most 1.5× that of the
  earlier half, or within the model's p99 target. Halves, not the first and last windows
  alone: one window's p99 rests on its slowest 1% of requests, which another process on a
  2-core machine can double for a window while p50 stays steady, whereas a leak or a growing
  queue raises every later window;
- memory: resident memory at the end exceeds that right after the warm-up by less than 50 MB.

It prints a table and writes `results/soak-<timestamp>/soak.json`; the exit status is 1
when a criterion fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bench import servers
from bench.locust_run import run_locust
from load_tests import matrix
from load_tests.results import within_target as meets
from runners.settings import REPO_ROOT

log = logging.getLogger(__name__)
USER = "DigitUser"
MODEL = "digits"
P99_GROWTH = 1.5
RSS_GROWTH_MB = 50.0
RSS_SAMPLE_S = 2.0
CAPACITY_USERS = (2, 8, 32)


class Window(BaseModel):
    number: int
    end_s: float
    requests: int
    failures: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int]
    wrong_labels: int
    rss_mb: float


class Verdict(BaseModel):
    error_ratio: float
    errors_ok: bool
    p99_first_ms: float
    p99_last_ms: float
    p99_target_ms: float
    p99_ok: bool
    rss_after_warmup_mb: float
    rss_end_mb: float
    rss_peak_mb: float
    rss_growth_mb: float
    rss_ok: bool

    @property
    def passed(self) -> bool:
        return self.errors_ok and self.p99_ok and self.rss_ok


class SoakResult(BaseModel):
    created: str
    command: str
    variant: str
    capacity_rps: float
    capacity_measured: bool
    offered_rps: float
    users: int
    duration_s: float
    window_s: float
    warmup_s: float
    windows: list[Window]
    rss_samples: list[tuple[float, float]]
    verdict: Verdict
    passed: bool


class RssSampler:
    """Resident memory of the server's process tree, every `period_s`, on a thread."""

    def __init__(self, server: servers.Server, period_s: float = RSS_SAMPLE_S) -> None:
        self.server = server
        self.period_s = period_s
        self.samples: list[tuple[float, float]] = []  # (unix time, MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> float:
        rss = sum(self.server.rss_mb().values())
        self.samples.append((round(time.time(), 1), round(rss, 1)))
        return rss

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.now()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, unix: float) -> float:
        """The last sample taken by `unix` (the first one if none was)."""
        before = [mb for t, mb in self.samples if t <= unix]
        return before[-1] if before else self.samples[0][1]


def measure_capacity(url: str, options: list[str], work: Path, step_s: float) -> float:
    """The best step of a short step load within the model's p99 target with no error; if no
    step meets the target, the best error-free step (the soak then runs below that)."""
    steps_file = work / "capacity_steps.json"
    shape = ["--shape", "step", "--step-users", ",".join(map(str, CAPACITY_USERS)),
             "--step-s", str(step_s), "--settle-s", str(min(2.0, step_s / 3)),
             "--steps-out", str(steps_file)]  # fmt: skip
    run_locust(url, USER, CAPACITY_USERS[0], len(CAPACITY_USERS) * step_s + 30,
               work / "capacity", [*options, *shape])  # fmt: skip
    raw = json.loads(steps_file.read_text())
    target = matrix.P99_TARGET_MS[MODEL]
    for step in raw:
        shed = sum(n for s, n in step["statuses"].items() if s in ("429", "503"))
        step["within_target"] = meets(step["p99_ms"], step["failures"] - shed, shed, target)
        log.info(
            "  capacity step: %3d users  %7.1f req/s  p99 %6.1f ms  failures %d",
            step["users"], step["requests_per_s"], step["p99_ms"] or 0, step["failures"],
        )  # fmt: skip
    within = [s for s in raw if s["within_target"]]
    clean = [s for s in raw if s["failures"] == 0]
    best = max(within or clean, key=lambda s: s["requests_per_s"], default=None)
    if best is None:
        raise RuntimeError(f"every capacity step failed: {raw}")
    return float(best["requests_per_s"])


def judge(
    windows: list[Window], rss_after_warmup: float, rss: list[tuple[float, float]]
) -> Verdict:
    requests = sum(w.requests for w in windows)
    failures = sum(w.failures for w in windows)
    target = matrix.P99_TARGET_MS[MODEL]
    half = len(windows) // 2
    first = statistics.median(w.p99_ms for w in windows[:half])
    last = statistics.median(w.p99_ms for w in windows[-half:])
    end = windows[-1].rss_mb
    return Verdict(
        error_ratio=failures / requests if requests else 1.0,
        errors_ok=requests > 0 and failures == 0,
        p99_first_ms=first,
        p99_last_ms=last,
        p99_target_ms=target,
        p99_ok=last <= P99_GROWTH * first or last <= target,
        rss_after_warmup_mb=rss_after_warmup,
        rss_end_mb=end,
        rss_peak_mb=max(r for _, r in rss),
        rss_growth_mb=end - rss_after_warmup,
        rss_ok=end - rss_after_warmup < RSS_GROWTH_MB,
    )


def _window(raw: dict[str, Any], rss: RssSampler, started: float) -> Window:
    """One window of the rate shape, as the locustfile measured it (`--steps-out`)."""
    return Window(
        number=int(raw["step"]) + 1,
        end_s=round(float(raw["end_unix"]) - started, 1),
        requests=int(raw["requests"]),
        failures=int(raw["failures"]),
        requests_per_s=float(raw["requests_per_s"]),
        p50_ms=float(raw["p50_ms"] or "nan"),
        p99_ms=float(raw["p99_ms"] or "nan"),
        statuses=raw["statuses"],
        wrong_labels=int(raw["wrong_labels"]),
        rss_mb=rss.at(float(raw["end_unix"])),
    )


def table(result: SoakResult) -> str:
    lines = [
        f"capacity {result.capacity_rps:.1f} req/s "
        f"({'measured' if result.capacity_measured else 'given'}); offered "
        f"{result.offered_rps:.1f} req/s by {result.users} users for {result.duration_s:.0f} s",
        f"{'window':>6} {'end s':>7} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'failures':>8} {'RSS MB':>8}",
    ]
    for w in result.windows:
        lines.append(
            f"{w.number:>6} {w.end_s:>7.0f} {w.requests:>9} {w.requests_per_s:>8.1f} "
            f"{w.p50_ms:>8.1f} {w.p99_ms:>8.1f} {w.failures:>8} {w.rss_mb:>8.1f}"
        )
    v = result.verdict
    ok = {True: "pass", False: "FAIL"}
    lines += [
        f"error ratio {v.error_ratio:.4f} (must be 0): {ok[v.errors_ok]}",
        f"p99 (median per half of the windows) first {v.p99_first_ms:.1f} ms, last "
        f"{v.p99_last_ms:.1f} ms (last <= {P99_GROWTH}x first or <= {v.p99_target_ms:.0f} ms "
        f"target): {ok[v.p99_ok]}",
        f"RSS after warm-up {v.rss_after_warmup_mb:.1f} MB, end {v.rss_end_mb:.1f} MB, peak "
        f"{v.rss_peak_mb:.1f} MB, growth {v.rss_growth_mb:+.1f} MB (< {RSS_GROWTH_MB:.0f} MB): "
        f"{ok[v.rss_ok]}",
        f"soak: {ok[result.passed].upper()}",
    ]
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=REPO_ROOT / "model_repository")
    parser.add_argument("--variant", choices=("fp32", "bf16", "int8"), default="fp32")
    parser.add_argument("--duration", type=float, default=1800.0, help="measured seconds")
    parser.add_argument(
        "--window-s", type=float, default=0.0, help="seconds per window (default: duration/6, "
        "at most 300)"
    )  # fmt: skip
    parser.add_argument("--warmup-s", type=float, default=30.0, help="load before the baseline")
    parser.add_argument(
        "--capacity-rps", type=float, default=0.0, help="skip the capacity step load"
    )
    parser.add_argument("--capacity-step-s", type=float, default=6.0)
    parser.add_argument("--load-fraction", type=float, default=0.7)
    parser.add_argument("--out", type=Path, help="default: results/soak-<timestamp>")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out: Path = (args.out or REPO_ROOT / "results" / f"soak-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    window_s = args.window_s or min(300.0, args.duration / 6)
    count = max(2, round(args.duration / window_s))
    options = ["--model", MODEL, "--variant", args.variant]
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        work = Path(scratch)
        env = {
            "BENTOML_HOME": str(work / "home"),
            "IMGSERVE_REPOSITORY": str(args.repository.resolve()),
            "IMGSERVE_MODELS": json.dumps([MODEL]),
        }
        server = servers.bentoml("service:ImageClassifier", out / "server.log", env)
        try:
            log.info("server ready in %.1f s at %s", server.ready_after_s, server.url)
            measured = not args.capacity_rps
            cap = args.capacity_rps or measure_capacity(
                server.url, options, work, args.capacity_step_s
            )
            rate = args.load_fraction * cap
            # Enough users that pacing, not latency, sets the rate: each sends every users/rate s.
            users = max(4, math.ceil(rate / 10))
            shape = ["--shape", "rate", "--rate", f"{rate:.2f}"]
            log.info("capacity %.1f req/s; soak at %.1f req/s, %d users, %d windows of %.0f s",
                     cap, rate, users, count, window_s)  # fmt: skip
            with RssSampler(server) as rss:
                if args.warmup_s > 0:
                    run_locust(server.url, USER, users, args.warmup_s, work / "warmup",
                               [*options, *shape])  # fmt: skip
                after_warmup = rss.now()
                started = time.time()
                # One Locust run for every window: no gap in the load between windows.
                steps_file = out / "windows.json"
                windowed = ["--step-s", str(window_s), "--settle-s", "0",
                            "--steps-out", str(steps_file)]  # fmt: skip
                run_locust(server.url, USER, users, count * window_s, out / "locust" / "soak",
                           [*options, *shape, *windowed])  # fmt: skip
                rss.now()
                windows = [_window(raw, rss, started) for raw in json.loads(steps_file.read_text())]
            for w in windows:
                log.info("  window %d: %.1f req/s, p99 %.1f ms, failures %d, RSS %.1f MB",
                         w.number, w.requests_per_s, w.p99_ms, w.failures, w.rss_mb)  # fmt: skip
            verdict = judge(windows, after_warmup, rss.samples)
        finally:
            servers.stop(server)
    result = SoakResult(
        created=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        command=shlex.join(["python", "-m", "load_tests.soak", *(argv or sys.argv[1:])]),
        variant=args.variant, capacity_rps=cap, capacity_measured=measured,
        offered_rps=rate, users=users, duration_s=count * window_s, window_s=window_s,
        warmup_s=args.warmup_s, windows=windows, rss_samples=rss.samples, verdict=verdict,
        passed=verdict.passed,
    )  # fmt: skip
    (out / "soak.json").write_text(result.model_dump_json(indent=2) + "\n")
    log.info("%s\nwrote %s", table(result), out / "soak.json")
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
