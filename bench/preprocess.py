"""Entry-side CPU per digit, in process: what the batch endpoint spends before the runner.

Run: `.venv/bin/python -m bench.preprocess` (`--help`). It times, on held-out digits as PNG,
decode-and-preprocess one call per image (the single-image path) and one call per request
of 16 (the batch endpoint), and the split of a 16-image multipart body. With
`--against REV` the same work is also timed with that git revision's
`runners/preprocessing.py` and `serving/bodies.py`, in alternating rounds, so a
before/after comparison comes from one run. Figures are CPU time of this thread (the median
round), which other load on this shared machine disturbs far less than wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from types import ModuleType

import numpy as np
from starlette.datastructures import Headers

from offline.data import load_heldout
from offline.digits import SPEC, encode_png
from runners import preprocessing
from runners.preprocessing import ImageLimits
from runners.settings import REPO_ROOT
from serving import bodies

IMAGES_PER_REQUEST = 16
BOUNDARY = "bench0123456789"


def revision_module(revision: str, path: str, name: str) -> ModuleType:
    """`path` as it was at `revision`, imported under `name`."""
    source = subprocess.run(
        ["git", "show", f"{revision}:{path}"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pydantic look their module up
    exec(compile(source, f"{revision}:{path}", "exec"), module.__dict__)
    return module


def multipart(pngs: list[bytes]) -> bytes:
    parts = b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="images"; filename="{i}.png"'
        f"\r\nContent-Type: image/png\r\n\r\n".encode()
        + png
        + b"\r\n"
        for i, png in enumerate(pngs)
    )
    return parts + f"--{BOUNDARY}--\r\n".encode()


def workloads(
    pre: ModuleType, bod: ModuleType, pngs: list[bytes]
) -> dict[str, Callable[[], object]]:
    """Name -> one call doing IMAGES_PER_REQUEST digits' worth of that work."""
    limits = ImageLimits()
    spec = pre.PreprocessSpec(**SPEC.model_dump())  # the revision's own class
    requests = [pngs[i : i + IMAGES_PER_REQUEST] for i in range(0, len(pngs), IMAGES_PER_REQUEST)]
    state = {"next": 0}

    def chosen() -> list[bytes]:
        state["next"] = (state["next"] + 1) % len(requests)
        return requests[state["next"]]

    def one_per_call() -> object:
        return [pre.decode_and_preprocess(png, spec, limits) for png in chosen()]

    many = getattr(pre, "decode_and_preprocess_many", None)

    def one_per_request() -> object:
        if many is None:  # a revision without a call for many: one call per image, stacked
            return np.stack([pre.decode_and_preprocess(png, spec, limits) for png in chosen()])
        return many(chosen(), spec, limits)

    headers = Headers({"content-type": f"multipart/form-data; boundary={BOUNDARY}"})
    bodies_ = [multipart(r) for r in requests]
    loop = asyncio.new_event_loop()

    def split() -> object:
        state["next"] = (state["next"] + 1) % len(bodies_)
        body = bodies_[state["next"]]
        return loop.run_until_complete(
            bod._multipart_files(headers, body, IMAGES_PER_REQUEST, "images")
        )

    return {
        "decode+preprocess, 1 image per call": one_per_call,
        f"decode+preprocess, {IMAGES_PER_REQUEST} per call": one_per_request,
        f"multipart split, {IMAGES_PER_REQUEST} parts": split,
    }


def cpu_us_per_image(work: Callable[[], object], seconds: float) -> float:
    calls = 0
    start = time.thread_time()
    while (spent := time.thread_time() - start) < seconds or calls < 3:
        work()
        calls += 1
    return spent / (calls * IMAGES_PER_REQUEST) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", metavar="REV", help="also time this git revision's code")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds")
    parser.add_argument("--round-s", type=float, default=0.3, help="CPU seconds per round")
    args = parser.parse_args(argv)
    images, _ = load_heldout()
    pngs = [encode_png(image) for image in images[:256]]
    contenders = {"this tree": workloads(preprocessing, bodies, pngs)}
    if args.against:
        contenders[args.against] = workloads(
            revision_module(args.against, "runners/preprocessing.py", "_against_preprocessing"),
            revision_module(args.against, "serving/bodies.py", "_against_bodies"),
            pngs,
        )
    rounds: dict[tuple[str, str], list[float]] = {}
    for tree, works in contenders.items():
        for name, work in works.items():
            work()  # warm: lazy imports, caches
            rounds[tree, name] = []
    for _ in range(args.rounds):
        for tree, works in contenders.items():
            for name, work in works.items():
                rounds[tree, name].append(cpu_us_per_image(work, args.round_s))
    mean_bytes = sum(map(len, pngs)) / len(pngs)
    print(f"CPU µs per digit ({mean_bytes:.0f}-byte 28x28 PNGs), median of {args.rounds} rounds:")
    names = list(contenders["this tree"])
    print(f"  {'':40s}" + "".join(f"{tree:>14s}" for tree in contenders))
    for name in names:
        cells = [statistics.median(rounds[tree, name]) for tree in contenders]
        row = "".join(f"{value:14.1f}" for value in cells)
        ratio = f"   {cells[1] / cells[0]:.2f}x faster" if len(cells) == 2 else ""
        print(f"  {name:40s}{row}{ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
