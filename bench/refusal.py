"""What one refused request costs the entry worker: shed before BentoML's stack vs at admission.

Run: `.venv/bin/python -m bench.refusal` (after `make models`). Under overload most requests
are refused, on the same event loop that answers the admitted ones: every microsecond a 429
takes is taken from them, and past the point where the loop cannot read requests as fast as
they come, they wait in the kernel's socket queues, where no admission bound reaches them
(`bench.overload` shows that wait client-side). This measures the price of one 429.

In one run, on free loopback ports, it starts the BentoML service twice (digits, the default
model) with an admission bound of one request (`max_concurrent_requests` 1, fixed), so that
nearly every request is refused:

- `early`: the default, refused by `serving.shedding.ShedEarly` outside BentoML's ASGI stack;
- `admission`: `IMGSERVE_EARLY_SHEDDING=false`, refused by the gateway after BentoML's stack,
  its router and the FastAPI app.

In alternating rounds each gets the same closed loop (`bench.loadgen`, pre-encoded PNG
digits on kept-alive connections), and the entry worker's CPU time is read from the kernel
before and after (psutil): CPU per answer, nearly all of them 429s. The median round counts.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path

import psutil

from bench import loadgen, servers
from bench.overload import digits
from runners.settings import REPO_ROOT

log = logging.getLogger(__name__)

MODES = {"early": {}, "admission": {"IMGSERVE_EARLY_SHEDDING": "false"}}


def entry_worker(server: servers.Server) -> psutil.Process:
    """The entry service's one worker (the one with the listening socket's --backlog)."""
    for process in server.processes():
        command = process.cmdline()
        if "--worker-id" in command and "--backlog" in command:
            return process
    raise RuntimeError("no entry worker found")


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def one_round(server: servers.Server, clients: int, seconds: float) -> dict[str, float]:
    host, port = server.url.removeprefix("http://").split(":")
    pngs, _ = digits()
    path = "/v1/classify?variant=fp32"
    requests = [loadgen.request_bytes(path, f"{host}:{port}", "image/png", p) for p in pngs]
    worker = entry_worker(server)
    before = cpu_s(worker)
    run = loadgen.closed_loop(host, int(port), requests, clients, seconds)
    used = cpu_s(worker) - before
    statuses = collections.Counter(a.status for a in run.answers)
    answers = len(run.answers)
    return {
        "answers_per_s": answers / run.seconds,
        "refused_share": statuses[429] / max(1, answers),
        "entry_cores": used / run.seconds,
        "entry_us_per_answer": used / max(1, answers) * 1e6,
        "other_statuses": sum(n for s, n in statuses.items() if s not in (200, 429)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64, help="closed-loop clients")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of a round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "bench-refusal.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    env = {
        "IMGSERVE_REPOSITORY": str(REPO_ROOT / "model_repository"),
        "IMGSERVE_MODELS": json.dumps(["digits"]),
        "IMGSERVE_LATENCY_TARGET_MS": "0",  # the fixed count alone
        "IMGSERVE_MAX_CONCURRENT_REQUESTS": "1",
        "IMGSERVE_MIN_CONCURRENT_REQUESTS": "1",
    }
    rounds: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    started: dict[str, servers.Server] = {}
    with tempfile.TemporaryDirectory(prefix="bench-refusal-") as work:
        try:
            for mode, extra in MODES.items():
                started[mode] = servers.bentoml(
                    "service:ImageClassifier", Path(work) / f"{mode}.log", env | extra, name=mode
                )
            for server in started.values():  # warm-up: connections, first answers
                one_round(server, args.clients, 1.0)
            for number in range(args.rounds):
                for mode, server in started.items():
                    found = one_round(server, args.clients, args.seconds)
                    rounds[mode].append(found)
                    log.info("round %d %-9s %6.0f answers/s, %3.0f%% refused, entry %.2f cores, "
                             "%4.0f us per answer", number + 1, mode, found["answers_per_s"],
                             100 * found["refused_share"], found["entry_cores"],
                             found["entry_us_per_answer"])  # fmt: skip
        finally:
            for server in started.values():
                servers.stop(server)
    median = {
        mode: {key: statistics.median(r[key] for r in found) for key in found[0]}
        for mode, found in rounds.items()
    }
    log.info("\nEntry worker CPU per answer (nearly all 429), median of %d rounds:", args.rounds)
    for mode, figures in median.items():
        log.info("  %-9s %6.0f us  (%5.0f answers/s, other statuses %d)", mode,
                 figures["entry_us_per_answer"], figures["answers_per_s"],
                 figures["other_statuses"])  # fmt: skip
    ratio = median["early"]["entry_us_per_answer"] / median["admission"]["entry_us_per_answer"]
    log.info("  early / admission: %.2f", ratio)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rounds": rounds, "median": median, "ratio": ratio}, indent=2))
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
