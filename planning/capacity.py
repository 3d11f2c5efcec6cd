"""Capacity planner: the replicas a request rate needs, and the HPA bounds that follow.

    python -m planning.capacity --rate 3000 --summary results/<timestamp>/summary.json \\
        --front-end bentoml --model digits --variant fp32 \\
        --write deploy/k8s/overlays/cpu/hpa-bentoml.yaml
    python -m planning.capacity --rate 3000 --capacity-rps 1494 --front-end bentoml

Input: the comparison report's `summary.json`, or any JSON of this minimal shape: an object
with a `cells` list (or the list itself), each cell with

    front_end      "bentoml", "triton-http", "triton-grpc", ...
    model          model family, e.g. "digits"
    variant        "fp32" or "int8"
    replicas       replicas the cell ran
    capacity_rps   the highest req/s of the cell's step load whose p99 stayed at or under the
                   target with no error and nothing shed (0 when no step did)

and optionally `batching` (bool, default true), `capacity_met` (bool), `p99_target_ms` and
`key`; a top-level `machine.cores` is reported with the plan. Other fields are ignored.
`--capacity-rps` replaces the report with one measured figure.

The rule. Per-replica capacity C is the capacity of the matching cell with one replica
(cells with more replicas shared one machine's cores, so they say less about one pod; with no
such cell, the fewest-replica cell's capacity divided by its replicas). Several matching
cells at that count (replica modes): the lowest counts. A replica is planned to run at
C x (1 - headroom), the headroom absorbing the time the HPA needs to add pods, so a rate R
needs ceil(R / (C x (1 - headroom))) replicas. The HPA bounds: maxReplicas for the peak
rate (`--rate`), minReplicas for the base rate (`--base-rate`), never below
`--min-replicas` (2: one pod can be disrupted, under the PodDisruptionBudget, while the other
serves).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# HorizontalPodAutoscaler names in deploy/k8s/base/autoscaling.yaml, by front end.
HPA_BY_SERVER = {"bentoml": "imgserve-bentoml", "triton": "imgserve-triton"}
REQUIRED_FIELDS = ("front_end", "model", "variant", "replicas", "capacity_rps")


class PlanError(ValueError):
    """The input cannot give a plan; the message says why."""


@dataclass(frozen=True)
class Cell:
    """One configuration of the comparison report, reduced to what planning needs."""

    front_end: str
    model: str
    variant: str
    replicas: int
    capacity_rps: float
    batching: bool = True
    capacity_met: bool = True
    p99_target_ms: float | None = None
    key: str = ""

    @classmethod
    def from_json(cls, raw: dict[str, Any], index: int) -> Cell:
        missing = [name for name in REQUIRED_FIELDS if name not in raw]
        if missing:
            raise PlanError(f"cell {index} lacks {', '.join(missing)}")
        replicas = int(raw["replicas"])
        if replicas < 1:
            raise PlanError(f"cell {index} has replicas {replicas}; at least 1 is needed")
        capacity = float(raw["capacity_rps"])
        target = raw.get("p99_target_ms")
        return cls(
            front_end=str(raw["front_end"]),
            model=str(raw["model"]),
            variant=str(raw["variant"]),
            replicas=replicas,
            capacity_rps=capacity,
            batching=bool(raw.get("batching", True)),
            capacity_met=bool(raw.get("capacity_met", capacity > 0)),
            p99_target_ms=None if target is None else float(target),
            key=str(raw.get("key", "")),
        )


@dataclass(frozen=True)
class Capacity:
    """Measured requests/s one replica serves at the p99 target, and where it came from."""

    per_replica_rps: float
    source: str
    p99_target_ms: float | None = None


@dataclass(frozen=True)
class Plan:
    capacity: Capacity
    headroom: float
    rate_rps: float
    base_rate_rps: float
    needed_replicas: int
    min_replicas: int
    max_replicas: int

    @property
    def usable_rps(self) -> float:
        """What one replica is planned to carry: capacity less the headroom."""
        return self.capacity.per_replica_rps * (1 - self.headroom)


def load_cells(path: Path) -> tuple[list[Cell], dict[str, Any]]:
    """The cells of a summary file and its top-level fields (empty for a bare list)."""
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PlanError(f"cannot read {path}: {exc}") from exc
    top: dict[str, Any] = {}
    if isinstance(document, dict):
        top, document = document, document.get("cells")
    if not isinstance(document, list):
        raise PlanError(f"{path} holds no list of cells (a list, or an object with 'cells')")
    return [Cell.from_json(raw, i) for i, raw in enumerate(document)], top


def per_replica_capacity(
    cells: Sequence[Cell], front_end: str, model: str, variant: str, batching: bool
) -> Capacity:
    """Per-replica capacity of one configuration (the module docstring gives the rule)."""
    wanted = (front_end, model, variant, batching)
    matching = [c for c in cells if (c.front_end, c.model, c.variant, c.batching) == wanted]
    if not matching:
        present = sorted({f"{c.front_end}/{c.model}/{c.variant}" for c in cells})
        raise PlanError(
            f"no cell for {front_end}/{model}/{variant} with batching {'on' if batching else 'off'}"
            f"; the report has {', '.join(present) or 'no cells'}"
        )
    fewest = min(c.replicas for c in matching)
    candidates = [c for c in matching if c.replicas == fewest]
    cell = min(candidates, key=lambda c: c.capacity_rps / c.replicas)
    if not cell.capacity_met or cell.capacity_rps <= 0:
        raise PlanError(
            f"cell {cell.key or front_end} met the p99 target at no step: no capacity to plan with"
        )
    name = cell.key or f"{front_end}/{model}/{variant}"
    source = f"cell {name}, {cell.replicas} replica{'s' if cell.replicas > 1 else ''}"
    if len(candidates) > 1:
        source += f", lowest of {len(candidates)} cells"
    return Capacity(cell.capacity_rps / cell.replicas, source, cell.p99_target_ms)


def replicas_for(rate_rps: float, capacity: Capacity, headroom: float) -> int:
    """Replicas that serve `rate_rps` with each kept `headroom` below its capacity."""
    if rate_rps <= 0:
        return 0
    return math.ceil(rate_rps / (capacity.per_replica_rps * (1 - headroom)) - 1e-9)


def plan(
    capacity: Capacity,
    rate_rps: float,
    *,
    headroom: float = 0.3,
    base_rate_rps: float = 0.0,
    min_replicas: int = 2,
) -> Plan:
    if not 0 <= headroom < 1:
        raise PlanError(f"headroom {headroom} must be at least 0 and below 1")
    if rate_rps <= 0:
        raise PlanError(f"rate {rate_rps} must be above 0")
    if not 0 <= base_rate_rps <= rate_rps:
        raise PlanError(f"base rate {base_rate_rps} must be between 0 and the rate {rate_rps}")
    if min_replicas < 1:
        raise PlanError(f"min replicas {min_replicas} must be at least 1")
    needed = replicas_for(rate_rps, capacity, headroom)
    low = max(min_replicas, replicas_for(base_rate_rps, capacity, headroom))
    return Plan(
        capacity=capacity,
        headroom=headroom,
        rate_rps=rate_rps,
        base_rate_rps=base_rate_rps,
        needed_replicas=needed,
        min_replicas=low,
        max_replicas=max(low, needed),
    )


def hpa_name(front_end: str) -> str:
    server = "triton" if front_end.startswith("triton") else front_end
    if server not in HPA_BY_SERVER:
        raise PlanError(f"no HorizontalPodAutoscaler for front end {front_end}; pass --hpa NAME")
    return HPA_BY_SERVER[server]


def hpa_patch(result: Plan, name: str, command: str) -> str:
    """A kustomize patch that sets one HPA's bounds, headed by the command that wrote it."""
    target = result.capacity.p99_target_ms
    at = f" at p99 <= {target:g} ms" if target is not None else ""
    why = (
        f"Per-replica capacity {result.capacity.per_replica_rps:,.0f} req/s{at}"
        f" ({result.capacity.source}); planned at {result.usable_rps:,.0f} req/s per replica"
        f" ({result.headroom:.0%} headroom): {result.rate_rps:,.0f} req/s needs"
        f" {result.needed_replicas}, {result.base_rate_rps:,.0f} req/s needs"
        f" {replicas_for(result.base_rate_rps, result.capacity, result.headroom)}."
    )
    header = [
        "# Written by the capacity planner; change its inputs and run it again:",
        f"#   {command}",
        *textwrap.wrap(why, width=98, initial_indent="# ", subsequent_indent="# "),
    ]
    body = [
        "apiVersion: autoscaling/v2",
        "kind: HorizontalPodAutoscaler",
        "metadata:",
        f"  name: {name}",
        "spec:",
        f"  minReplicas: {result.min_replicas}",
        f"  maxReplicas: {result.max_replicas}",
    ]
    return "\n".join([*header, *body]) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m planning.capacity", description=__doc__.splitlines()[0]
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--summary", type=Path, help="comparison report summary.json")
    source.add_argument(
        "--capacity-rps", type=float, help="measured req/s of one replica at the p99 target"
    )
    parser.add_argument(
        "--source", help="where --capacity-rps was measured (written into the patch)"
    )
    parser.add_argument(
        "--p99-target-ms", type=float, help="the p99 target --capacity-rps was measured at"
    )
    parser.add_argument("--rate", type=float, required=True, help="peak req/s to serve")
    parser.add_argument(
        "--base-rate", type=float, default=0.0, help="lowest sustained req/s (sets minReplicas)"
    )
    parser.add_argument(
        "--headroom", type=float, default=0.3, help="share of capacity kept free (0.3)"
    )
    parser.add_argument("--min-replicas", type=int, default=2, help="floor of minReplicas (2)")
    parser.add_argument("--front-end", default="bentoml", help="bentoml, triton-http, ...")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--variant", default="fp32")
    parser.add_argument(
        "--no-batching", action="store_true", help="plan from the cells with batching off"
    )
    parser.add_argument("--hpa", help="HorizontalPodAutoscaler to patch (default: by front end)")
    parser.add_argument("--write", type=Path, help="write the HPA bounds as a kustomize patch")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    args = parse_args(argv)
    try:
        if args.summary is not None:
            cells, top = load_cells(args.summary)
            capacity = per_replica_capacity(
                cells, args.front_end, args.model, args.variant, not args.no_batching
            )
            cores = (top.get("machine") or {}).get("cores")
            machine = f" on a {cores}-core machine" if cores else ""
            capacity = Capacity(
                capacity.per_replica_rps,
                f"{capacity.source}, {args.summary}{machine}",
                capacity.p99_target_ms,
            )
        else:
            if args.capacity_rps <= 0:
                raise PlanError("--capacity-rps must be above 0")
            capacity = Capacity(
                args.capacity_rps, args.source or "given with --capacity-rps", args.p99_target_ms
            )
        result = plan(
            capacity,
            args.rate,
            headroom=args.headroom,
            base_rate_rps=args.base_rate,
            min_replicas=args.min_replicas,
        )
        name = args.hpa or hpa_name(args.front_end)
    except PlanError as exc:
        log.error("error: %s", exc)
        return 2
    log.info(
        "%s %s %s: %.0f req/s per replica (%s)",
        args.front_end, args.model, args.variant, capacity.per_replica_rps, capacity.source,
    )  # fmt: skip
    log.info(
        "planned at %.0f req/s per replica (%.0f%% headroom): %.0f req/s needs %d replicas",
        result.usable_rps, 100 * result.headroom, result.rate_rps, result.needed_replicas,
    )  # fmt: skip
    log.info("%s: minReplicas %d, maxReplicas %d", name, result.min_replicas, result.max_replicas)
    if args.write is not None:
        command = "python -m planning.capacity " + shlex.join(argv or sys.argv[1:])
        args.write.write_text(hpa_patch(result, name, command))
        log.info("wrote %s", args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
