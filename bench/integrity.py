"""Every answer is its own request's: many concurrent requests to Triton, each one checked.

    python -m bench.integrity [--requests 200000] [--concurrency 32] [--protocols http grpc]
                              [--mode native|pytriton]

It starts Triton (`python -m triton_server`) on the committed digits repository and first
asks it, one request at a time, for each held-out image's answer (label and scores): the
reference. Then, per protocol (KServe v2 over HTTP and gRPC, with Triton's own asyncio
clients), `--concurrency` clients send `--requests` requests in all, images in a shuffled
order, so that Triton's dynamic batcher mixes images of many requests in each batch. Every
answer is compared with its own image's reference: the same label, and scores within
`SCORE_TOLERANCE` (a batch of another size may round differently). A request whose bytes
were changed on the way, or an answer that is another request's, shows as an error or a
wrong answer; the target is 0 of each. Exit 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import results, servers
from offline.card import describe_machine
from offline.data import load_heldout
from offline.digits import encode_png

log = logging.getLogger("bench.integrity")

MODEL = "digits_fp32"
SCORE_TOLERANCE = 1e-3
EXAMPLES = 5  # wrong answers and errors quoted in full
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Reference:
    """One image's answer when it is alone in its batch."""

    label: str
    scores: np.ndarray


@dataclass
class Tally:
    """What came back for one protocol."""

    protocol: str
    sent: int = 0
    right: int = 0
    wrong: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    slowest_ms: float = 0.0  # the slowest answer: a stalled batcher shows here

    def note(self, text: str) -> None:
        if len(self.examples) < EXAMPLES:
            self.examples.append(text)

    def summary(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "requests": self.sent,
            "right": self.right,
            "wrong": self.wrong,
            "errors": sum(self.errors.values()),
            "errors_by_message": dict(self.errors.most_common(10)),
            "examples": self.examples,
            "requests_per_s": self.sent / self.seconds if self.seconds else 0.0,
            "slowest_ms": self.slowest_ms,
        }


class Client:
    """One protocol's asyncio client: an image in, (label, scores) out."""

    def __init__(self, protocol: str, address: str) -> None:
        self.protocol = protocol
        if protocol == "http":
            import tritonclient.http.aio as module
        else:
            import tritonclient.grpc.aio as module
        self.module: Any = module
        self.client: Any = module.InferenceServerClient(address)
        self.outputs = [module.InferRequestedOutput("label"), module.InferRequestedOutput("scores")]

    async def answer(self, png: bytes, request_id: str) -> tuple[str, np.ndarray]:
        image = self.module.InferInput("image", [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[png]], dtype=np.object_))
        kwargs: dict[str, Any] = {"outputs": self.outputs, "request_id": request_id}
        if self.protocol == "grpc":
            kwargs["client_timeout"] = TIMEOUT_S
        reply = await self.client.infer(MODEL, [image], **kwargs)
        label = reply.as_numpy("label").reshape(-1)[0]
        return label.decode() if isinstance(label, bytes) else str(label), reply.as_numpy(
            "scores"
        ).reshape(-1)

    async def close(self) -> None:
        await self.client.close()


async def reference(http: str, pngs: Sequence[bytes]) -> list[Reference]:
    """Each image's answer over HTTP (`host:port`), one request at a time (each alone in its
    batch)."""
    client = Client("http", http)
    try:
        answers = []
        for i, png in enumerate(pngs):
            label, scores = await client.answer(png, f"reference-{i}")
            answers.append(Reference(label, scores.copy()))
        return answers
    finally:
        await client.close()


async def hammer(
    protocol: str,
    address: str,
    pngs: Sequence[bytes],
    expected: Sequence[Reference],
    *,
    requests: int,
    concurrency: int,
    seed: int = 0,
) -> Tally:
    """`requests` concurrent requests over `protocol` to `address` (`host:port`), every
    answer checked against its image's reference."""
    tally = Tally(protocol)
    rng = random.Random(seed)
    order = [rng.randrange(len(pngs)) for _ in range(requests)]
    queue = iter(enumerate(order))
    client = Client(protocol, address)

    async def worker() -> None:
        for number, image in queue:
            request_id = f"{protocol}-{number}-{image}"
            tally.sent += 1
            sent = time.perf_counter()
            try:
                label, scores = await client.answer(pngs[image], request_id)
            except Exception as exc:  # every failure is counted, by its message
                message = f"{type(exc).__name__}: {exc}"[:300]
                tally.errors[message] += 1
                tally.note(f"request {request_id}: {message}")
                continue
            tally.slowest_ms = max(tally.slowest_ms, (time.perf_counter() - sent) * 1000)
            want = expected[image]
            close = scores.shape == want.scores.shape and bool(
                np.max(np.abs(scores - want.scores)) <= SCORE_TOLERANCE
            )
            if label == want.label and close:
                tally.right += 1
            else:
                tally.wrong += 1
                tally.note(
                    f"request {request_id}: label {label!r} (image's {want.label!r}), "
                    f"scores {np.round(scores[:10], 4).tolist()} "
                    f"(image's {np.round(want.scores[:10], 4).tolist()})"
                )

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        tally.seconds = time.perf_counter() - started
        await client.close()
    return tally


def run(
    requests: int,
    concurrency: int,
    protocols: Sequence[str],
    images: int = 1000,
    mode: str = "native",
) -> list[Tally]:
    """Start Triton in `mode` (`TritonSettings.triton_mode`), take the reference, then hammer
    each protocol; Triton stops at the end."""
    heldout, _ = load_heldout()
    pngs = [encode_png(image) for image in heldout[:images]]
    with tempfile.TemporaryDirectory(prefix="bench-integrity-") as tmp:
        server = servers.triton(
            servers.REPO_ROOT / "model_repository",
            ["digits"],
            Path(tmp) / "triton.log",
            env={"IMGSERVE_DATA_DIR": tmp, "IMGSERVE_TRITON_MODE": mode},
        )
        try:
            http, grpc = server.url.removeprefix("http://"), server.extra["grpc"]
            expected = asyncio.run(reference(http, pngs))
            return [
                asyncio.run(
                    hammer(
                        protocol,
                        http if protocol == "http" else grpc,
                        pngs,
                        expected,
                        requests=requests,
                        concurrency=concurrency,
                    )
                )
                for protocol in protocols
            ]
        finally:
            servers.stop(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.integrity", description=__doc__)
    parser.add_argument("--requests", type=int, default=200_000, help="per protocol")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--protocols", nargs="+", choices=("http", "grpc"), default=["http", "grpc"]
    )
    parser.add_argument(
        "--mode", choices=("native", "pytriton"), default="native", help="Triton's mode"
    )
    parser.add_argument("--out", type=Path, default=results.default_out("integrity"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    log.info("%s", describe_machine())
    tallies = run(args.requests, args.concurrency, args.protocols, mode=args.mode)
    failed = False
    for tally in tallies:
        summary = tally.summary()
        met = summary["errors"] == 0 and summary["wrong"] == 0 and summary["right"] == tally.sent
        failed |= not met
        log.info(
            "Triton (%s) %s: %d requests, %d concurrent: %d right, %d wrong, %d errors, "
            "%.0f req/s (target 0 wrong and 0 errors: %s)",
            args.mode, tally.protocol, tally.sent, args.concurrency, tally.right, tally.wrong,
            summary["errors"], summary["requests_per_s"], "met" if met else "NOT MET",
        )  # fmt: skip
        for example in tally.examples:
            log.info("  %s", example)
    results.write(
        args.out,
        "integrity",
        {
            "model": MODEL,
            "mode": args.mode,
            "concurrency": args.concurrency,
            "protocols": [t.summary() for t in tallies],
        },
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
