"""Triton's two modes and its instance count, side by side: throughput and CPU per request.

    python -m bench.triton_modes [--modes pytriton native] [--instances 1 2]
                                 [--queue-bounds stub triton]
                                 [--requests 5000] [--concurrency 32] [--rounds 2]

For each mode (`TritonSettings.triton_mode`), each `instance_group` count and, in native mode,
each keeper of the queue bound (`TritonSettings.triton_queue_bound`: the stub, or
tritonserver's queue policy, whose stalls `triton_server.queue_guard` describes; PyTriton mode
always gives it to tritonserver) it starts one server on a copy of the committed digits_fp32
entry with that count, and sends it
`--requests` image requests per protocol (`bench.integrity.hammer`: every answer checked
against its own image), in alternating rounds so that a burst of other load on a shared
machine does not favour one of them. Reported per cell: the median round's requests per
second and server CPU, and the slowest answer of all its rounds (a stalled batcher shows as
500 ms and more). The CPU is milliseconds per request from the kernel's CPU time of the
server's whole process tree (launcher, tritonserver and its stubs): the cost from the
request's entry to the engine and back.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import integrity, results, servers
from offline.data import load_heldout
from offline.digits import encode_png
from runners.repository import Repository, write_model

log = logging.getLogger("bench.triton_modes")
FAMILY, VARIANT = "digits", "fp32"


def repository(root: Path, instances: int) -> Path:
    """The committed digits entries, digits_fp32 with `instances` instances."""
    source = Repository(servers.REPO_ROOT / "model_repository")
    for entry in source.families()[FAMILY].values():
        update: dict[str, Any] = {"directory": root / entry.name}
        if entry.variant == VARIANT:
            update["instances"] = instances
        write_model(entry.model_copy(update=update), entry.onnx_path)
    return root


def run(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    heldout, _ = load_heldout()
    pngs = [encode_png(image) for image in heldout[:500]]
    started: dict[tuple[str, int, str], servers.Server] = {}
    try:
        for mode in args.modes:
            for count in args.instances:
                for bound in args.queue_bounds if mode == "native" else ["triton"]:
                    name = f"{mode}-{count}-{bound}"
                    root = repository(work / name / "repo", count)
                    env = {"IMGSERVE_TRITON_MODE": mode, "IMGSERVE_DATA_DIR": str(work / name),
                           "IMGSERVE_TRITON_QUEUE_BOUND": bound}  # fmt: skip
                    started[mode, count, bound] = servers.triton(
                        root, [FAMILY], work / name / "server.log", name=f"triton {name}", env=env
                    )
        first = next(iter(started.values()))
        expected = asyncio.run(integrity.reference(first.url.removeprefix("http://"), pngs))
        rounds: dict[tuple[str, int, str, str], list[tuple[float, float, int, float]]] = {}
        for number in range(args.rounds):
            for (mode, count, bound), server in started.items():
                for protocol in args.protocols:
                    address = (
                        server.url.removeprefix("http://")
                        if protocol == "http"
                        else server.extra["grpc"]
                    )
                    cpu = server.cpu_seconds()
                    tally = asyncio.run(
                        integrity.hammer(
                            protocol, address, pngs, expected, requests=args.requests,
                            concurrency=args.concurrency, seed=number,
                        )
                    )  # fmt: skip
                    cpu_ms = (server.cpu_seconds() - cpu) * 1000 / max(1, tally.sent)
                    bad = tally.sent - tally.right
                    rounds.setdefault((mode, count, bound, protocol), []).append(
                        (tally.sent / tally.seconds, cpu_ms, bad, tally.slowest_ms)
                    )
                    log.info(
                        "round %d  %-8s instances %d  bound in %-6s %-4s %8.1f req/s  "
                        "%6.2f CPU ms/request  slowest %6.0f ms  %d wrong or failed",
                        number + 1, mode, count, bound, protocol, tally.sent / tally.seconds,
                        cpu_ms, tally.slowest_ms, bad,
                    )  # fmt: skip
    finally:
        for server in started.values():
            servers.stop(server)
    return [
        {
            "mode": mode,
            "instances": count,
            "queue_bound": bound,
            "protocol": protocol,
            "requests_per_s": statistics.median(r[0] for r in found),
            "cpu_ms_per_request": statistics.median(r[1] for r in found),
            "slowest_ms": max(r[3] for r in found),
            "wrong_or_failed": sum(r[2] for r in found),
        }
        for (mode, count, bound, protocol), found in rounds.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.triton_modes", description=__doc__)
    parser.add_argument("--modes", nargs="+", choices=("pytriton", "native"),
                        default=["pytriton", "native"])  # fmt: skip
    parser.add_argument("--instances", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--queue-bounds", nargs="+", choices=("stub", "triton"),
                        default=["stub", "triton"], help="native: who keeps the bound")  # fmt: skip
    parser.add_argument("--protocols", nargs="+", choices=("http", "grpc"),
                        default=["http", "grpc"])  # fmt: skip
    parser.add_argument("--requests", type=int, default=5000, help="per round and protocol")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=results.default_out("triton-modes"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from offline.card import describe_machine

    log.info("%s", describe_machine())
    with tempfile.TemporaryDirectory(prefix="bench-triton-modes-") as tmp:
        cells = run(args, Path(tmp))
    log.info("\nmedian round, %d requests per round and protocol, %d concurrent:",
             args.requests, args.concurrency)  # fmt: skip
    log.info("  %-8s %9s %-8s %-8s %10s %12s %11s %8s", "mode", "instances", "bound in",
             "protocol", "req/s", "CPU ms/req", "slowest ms", "wrong")  # fmt: skip
    for c in cells:
        log.info("  %-8s %9d %-8s %-8s %10.1f %12.2f %11.0f %8d", c["mode"], c["instances"],
                 c["queue_bound"], c["protocol"], c["requests_per_s"], c["cpu_ms_per_request"],
                 c["slowest_ms"], c["wrong_or_failed"])  # fmt: skip
    results.write(args.out, "triton-modes", {"concurrency": args.concurrency, "cells": cells})
    return 1 if any(c["wrong_or_failed"] for c in cells) else 0


if __name__ == "__main__":
    sys.exit(main())
