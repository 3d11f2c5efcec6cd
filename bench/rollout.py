"""Throughput and p99 while a new version rolls out, against steady state, in one run.

    python -m bench.rollout [--rounds 3] [--seconds 8] [--clients 16]

One BentoML server on a copy of the digits repository with its own embedded registry, where
version 2 is the same network rebuilt. Each round is a steady phase and a rollout phase of
the same closed-loop load, back to back (this machine is shared and noisy, so the ratio of
the two is the figure): in the rollout phase the other version is rolled out (canary 10%,
shadow 10%), loaded and warmed beside the champion, judged by the controller and promoted
within the phase, and the old champion unloaded. Targets: rollout throughput >= 0.9 of
steady, p99 <= 1.5 of steady, every answer 200.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from bench import results, servers
from bench.loadgen import Run, closed_loop, request_bytes
from lifecycle.promote import adopt
from lifecycle.registry import Registry
from lifecycle.settings import RegistrySettings
from offline.card import describe_machine
from offline.data import load_heldout
from offline.digits import encode_png

log = logging.getLogger("bench.rollout")
TOKEN = "bench-rollout"
FAMILY = "digits"
COMMITTED = servers.REPO_ROOT / "model_repository"


def _prepare(root: Path) -> tuple[Path, Path]:
    import shutil

    import onnx

    repository, data = root / "repo", root / "data"
    for variant in ("fp32", "int8"):
        shutil.copytree(COMMITTED / f"{FAMILY}_{variant}", repository / f"{FAMILY}_{variant}")
    registry = Registry(RegistrySettings(data_dir=data))
    adopt(registry, repository, FAMILY)
    staging = root / "v2"
    for variant in ("fp32", "int8"):
        shutil.copytree(COMMITTED / f"{FAMILY}_{variant}", staging / f"{FAMILY}_{variant}")
        path = staging / f"{FAMILY}_{variant}" / "1" / "model.onnx"
        model = onnx.load(str(path))
        model.doc_string = "digits, rebuilt for bench.rollout"
        path.unlink()
        onnx.save(model, str(path))
    registry.record(FAMILY, staging, "bench.rollout: the same network rebuilt")
    return repository, data


def _timeline(run: Run, step_s: float = 0.5) -> str:
    """Answers per second in each `step_s` of a phase: where a rollout costs."""
    if not run.answers:
        return "-"
    first = min(a.sent_s for a in run.answers)
    counts = np.bincount(
        [int((a.sent_s + a.latency_s - first) / step_s) for a in run.answers if a.status == 200]
    )
    return " ".join(f"{count / step_s:.0f}" for count in counts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rollout", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--window-s", type=float, default=3.0, help="the controller's window")
    parser.add_argument("--out", type=Path, default=results.default_out("rollout"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    log.info("%s", describe_machine())
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        repository, data = _prepare(Path(tmp))
        env = {
            "IMGSERVE_REPOSITORY": str(repository),
            "IMGSERVE_DATA_DIR": str(data),
            "IMGSERVE_ADMIN_TOKEN": TOKEN,
            "IMGSERVE_ROLLOUT_WINDOW_S": str(args.window_s),
            "IMGSERVE_ROLLOUT_MIN_SAMPLES": "30",
            "IMGSERVE_ROLLOUT_INTERVAL_S": "0.5",
            "IMGSERVE_ROLLOUT_P99_FLOOR_MS": "1000",
        }
        server = servers.bentoml("service:ImageClassifier", Path(tmp) / "server.log", env)
        try:
            return _measure(server, args)
        finally:
            servers.stop(server)


def _measure(server: servers.Server, args: argparse.Namespace) -> int:
    host, port = server.url.removeprefix("http://").split(":")
    images, _ = load_heldout()
    requests = [
        request_bytes("/v1/classify", f"{host}:{port}", "image/png", encode_png(image))
        for image in images[:256]
    ]
    closed_loop(host, int(port), requests, args.clients, 2.0)  # warm
    admin = httpx.Client(base_url=f"{server.url}/admin", timeout=30)
    rows = []
    champion = 1
    authorised = {"Authorization": f"Bearer {TOKEN}"}
    for round_ in range(1, args.rounds + 1):
        other = 2 if champion == 1 else 1
        steady = closed_loop(host, int(port), requests, args.clients, args.seconds).figures()
        body: dict[str, object] = {"version": other, "canary_share": 0.1, "shadow_share": 0.1}
        started: list[int] = []

        def roll(payload: dict[str, object] = body, into: list[int] = started) -> None:
            into.append(admin.post("/rollout", json=payload, headers=authorised).status_code)

        timer = threading.Timer(0.5, roll)
        timer.start()
        began = time.monotonic()
        phase = closed_loop(host, int(port), requests, args.clients, args.seconds)
        rolling = phase.figures()
        timer.join()
        log.info("round %d: rollout phase, answers/s per 0.5 s: %s", round_, _timeline(phase))
        decisions = admin.get("/rollouts").json()["decisions"]
        mine = [d for d in decisions if d["figures"].get("version") == other and d["at"] > 0]
        decided = mine[-1]["decision"] if mine and len(decisions) == round_ else "none"
        rows.append((steady, rolling, decided))
        log.info(
            "round %d: steady %7.1f req/s p99 %6.1f ms | rollout to v%d %7.1f req/s p99 %6.1f "
            "ms (start %s, decision %s, %.1f s) | answers not 200: %d / %d",
            round_, steady[0], steady[1], other, rolling[0], rolling[1],
            started[0] if started else "-", decided, time.monotonic() - began,
            steady[2], rolling[2],
        )  # fmt: skip
        if decided == "promote":
            champion = other
        else:  # not decided within the phase: put the champion back alone
            admin.post("/rollback", json={}, headers=authorised)
    throughput = statistics.median(r[1][0] / r[0][0] for r in rows)
    p99 = statistics.median(r[1][1] / r[0][1] for r in rows)
    failed = sum(r[0][2] + r[1][2] for r in rows)
    promoted_all = all(r[2] == "promote" for r in rows)
    results.write(
        args.out,
        "rollout",
        {
            "rounds": [
                {
                    "steady_rps": steady[0], "steady_p99_ms": steady[1],
                    "rollout_rps": rolling[0], "rollout_p99_ms": rolling[1],
                    "answers_not_200": steady[2] + rolling[2], "decision": decided,
                }
                for steady, rolling, decided in rows
            ],
            "throughput_ratio": throughput,
            "p99_ratio": p99,
            "answers_not_200": failed,
            "every_rollout_promoted": promoted_all,
            "clients": args.clients,
            "seconds": args.seconds,
        },
    )  # fmt: skip
    log.info(
        f"median of {len(rows)} rounds: rollout / steady throughput {throughput:.2f} "
        f"(target >= 0.90: {'met' if throughput >= 0.9 else 'NOT MET'}), p99 {p99:.2f}x "
        f"(target <= 1.50: {'met' if p99 <= 1.5 else 'NOT MET'}), answers not 200: {failed} "
        f"({'met' if failed == 0 else 'NOT MET'}), every rollout promoted: "
        f"{'yes' if promoted_all else 'NO'}"
    )
    return 0 if throughput >= 0.9 and p99 <= 1.5 and failed == 0 and promoted_all else 1


if __name__ == "__main__":
    sys.exit(main())
