"""What the prediction log costs: the single-image load with logging on and off, in one run.

    python -m bench.predictionlog [--rounds 5] [--seconds 6] [--clients 16]

Two BentoML services on the committed digits repository, each with its own data directory:
one with the prediction log on (the embedded SQLite store), one with it off. Each round runs
the same closed-loop single-image load against one, then the other, back to back (this
machine is shared and noisy, so the ratio within a round is the figure; the median of the
rounds is reported). Targets: throughput with logging >= 0.95 of without, and no record
dropped (`imgserve_prediction_log_records_total{outcome="dropped"}`), every answer 200.
Each round also reads each server's CPU time per answer from the kernel (its whole process
tree, the log's writer process included): what logging costs a CPU-bound server, and less
swayed than throughput by what else runs on a shared machine.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

from bench import results, servers
from bench.loadgen import closed_loop, request_bytes
from lifecycle.controller import parse
from offline.card import describe_machine
from offline.data import load_heldout
from offline.digits import encode_png

log = logging.getLogger("bench.predictionlog")


def _records(server: servers.Server) -> dict[str, float]:
    samples = parse(httpx.get(f"{server.url}/metrics", timeout=10).text)
    return {
        dict(labels)["outcome"]: value
        for (name, labels), value in samples.items()
        if name == "imgserve_prediction_log_records_total"
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.predictionlog", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--out", type=Path, default=results.default_out("predictionlog"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    log.info("%s", describe_machine())
    with tempfile.TemporaryDirectory(prefix="bench-predictionlog-") as tmp:
        started: dict[str, servers.Server] = {}
        try:
            for name, on in (("on", "true"), ("off", "false")):
                home = Path(tmp) / name / "bentoml"  # its own metrics files, too
                home.mkdir(parents=True)
                env = {
                    "BENTOML_HOME": str(home),
                    "IMGSERVE_DATA_DIR": str(Path(tmp) / name),
                    "IMGSERVE_PREDICTION_LOG": on,
                    "IMGSERVE_REPOSITORY": str(servers.REPO_ROOT / "model_repository"),
                }
                started[name] = servers.bentoml(
                    "service:ImageClassifier", Path(tmp) / f"{name}.log", env, name=name
                )
            return _measure(started["on"], started["off"], args)
        finally:
            for server in started.values():
                servers.stop(server)


def _measure(on: servers.Server, off: servers.Server, args: argparse.Namespace) -> int:
    images, _ = load_heldout()
    pngs = [encode_png(image) for image in images[:256]]

    def load(server: servers.Server, seconds: float) -> tuple[float, float, int, float]:
        """Answers 200 per second, their p99 in ms, answers not 200, and the server's CPU
        (its whole process tree, the log's writer included) in ms per answer."""
        host, port = server.url.removeprefix("http://").split(":")
        requests = [
            request_bytes("/v1/classify", f"{host}:{port}", "image/png", png) for png in pngs
        ]
        cpu = server.cpu_seconds()
        run = closed_loop(host, int(port), requests, args.clients, seconds)
        cpu_ms = (server.cpu_seconds() - cpu) * 1000 / max(1, len(run.answers))
        return (*run.figures(), cpu_ms)

    for server in (on, off):
        load(server, 2.0)  # warm
    ratios, p99s, cpus, failed = [], [], [], 0
    for round_ in range(1, args.rounds + 1):
        # Alternate which goes first, so neither always follows the other.
        first, second = (off, on) if round_ % 2 else (on, off)
        figures = {first.name: load(first, args.seconds), second.name: load(second, args.seconds)}
        ratio = figures["on"][0] / figures["off"][0]
        ratios.append(ratio)
        p99s.append(figures["on"][1] / figures["off"][1])
        cpus.append(figures["on"][3] / figures["off"][3])
        failed += figures["on"][2] + figures["off"][2]
        log.info(
            "round %d: logging off %7.1f req/s p99 %6.1f ms cpu %.3f ms/req | on %7.1f req/s "
            "p99 %6.1f ms cpu %.3f ms/req | on/off %.3f, cpu on/off %.3f",
            round_, figures["off"][0], figures["off"][1], figures["off"][3], figures["on"][0],
            figures["on"][1], figures["on"][3], ratio, cpus[-1],
        )  # fmt: skip
    records = _records(on)
    dropped = int(records.get("dropped", 0))
    throughput = statistics.median(ratios)
    results.write(
        args.out,
        "predictionlog",
        {
            "rounds": [
                {"on_over_off": ratio, "p99_on_over_off": p99, "cpu_on_over_off": cpu}
                for ratio, p99, cpu in zip(ratios, p99s, cpus, strict=True)
            ],
            "throughput_ratio": throughput,
            "p99_ratio": statistics.median(p99s),
            "cpu_per_request_ratio": statistics.median(cpus),
            "records_written": int(records.get("written", 0)),
            "records_dropped": dropped,
            "records_failed": int(records.get("failed", 0)),
            "answers_not_200": failed,
            "clients": args.clients,
            "seconds": args.seconds,
        },
    )  # fmt: skip
    log.info(
        f"median of {len(ratios)} rounds: throughput with logging / without {throughput:.3f} "
        f"(target >= 0.95: {'met' if throughput >= 0.95 else 'NOT MET'}), p99 "
        f"{statistics.median(p99s):.2f}x, server CPU per answer {statistics.median(cpus):.3f}x "
        f"(a CPU-bound server's throughput ratio, noisy neighbours aside: "
        f"{1 / statistics.median(cpus):.3f}); records written {int(records.get('written', 0))}, "
        f"dropped {dropped} ({'met' if dropped == 0 else 'NOT MET'}), failed "
        f"{int(records.get('failed', 0))}; answers not 200: {failed}"
    )
    return 0 if throughput >= 0.95 and dropped == 0 and failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
