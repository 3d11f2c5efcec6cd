"""The comparison matrix: which cells exist, which servers each needs, how each is loaded.

A cell is one front end × model × variant × batching × replicas × replica mode. Cells that
can share running servers share a `Deployment` (a BentoML or Triton server serves both
variants, Triton serves HTTP and gRPC), so the driver starts each set of servers once.
Replicas are N server processes behind nginx (`nginx`), or, for BentoML only, one server
with N entry and N runner workers (`workers`); one replica is the same in both modes and
is listed once, as `nginx`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

FrontEnd = Literal["bentoml", "triton-http", "triton-grpc", "baseline"]
FRONT_ENDS: tuple[FrontEnd, ...] = ("bentoml", "triton-http", "triton-grpc", "baseline")
MODELS = ("digits", "mobilenetv2", "resnet50", "detector")
# Models that detect (the digit detector): BentoML answers them on /v1/detect, Triton with
# padded boxes; the plain baseline only classifies, so it serves none of them.
DETECTORS = frozenset({"detector"})
# bf16 joins where a model has a bf16 variant this CPU offers (`compare.chosen_cells`).
VARIANTS = ("fp32", "bf16", "int8")
REPLICAS = (1, 2, 3)
ReplicaMode = Literal["nginx", "workers"]
REPLICA_MODES: tuple[ReplicaMode, ...] = ("nginx", "workers")

# The p99 each model must stay under for its capacity: the alert threshold for the digits
# model (prometheus/rules/alerts.yml), looser for the two heavier load profiles.
P99_TARGET_MS = {"digits": 50.0, "mobilenetv2": 250.0, "resnet50": 1000.0, "detector": 250.0}
# Concurrent users per coarse step of the step load (the heavy profiles saturate 2 cores
# early); the capacity search then adds finer steps around the knee (`results.refine_users`).
STEP_USERS = {
    "digits": (2, 8, 32, 64),
    "mobilenetv2": (1, 4, 16),
    "resnet50": (1, 4, 16),
    "detector": (1, 4, 16),
}


@dataclass(frozen=True)
class Deployment:
    """One set of running servers: what the driver starts and stops together."""

    server: Literal["bentoml", "triton", "baseline"]
    model: str
    batching: bool
    replicas: int
    replica_mode: ReplicaMode
    variant: str = ""  # the baseline serves one model file, so one variant

    @property
    def key(self) -> str:
        parts = [self.server, self.model, self.variant, "batch" if self.batching else "nobatch"]
        return "-".join(p for p in [*parts, f"{self.replicas}{self.replica_mode}"] if p)


@dataclass(frozen=True)
class Cell:
    front_end: FrontEnd
    model: str
    variant: str
    batching: bool
    replicas: int
    replica_mode: ReplicaMode

    @property
    def key(self) -> str:
        batching = "batch" if self.batching else "nobatch"
        return (
            f"{self.front_end}-{self.model}-{self.variant}-{batching}-"
            f"{self.replicas}{self.replica_mode}"
        )

    @property
    def configuration(self) -> str:
        """The cell without its replica count: the line a scaling plot draws."""
        batching = "batching" if self.batching else "no batching"
        return f"{self.front_end} {self.model} {self.variant} {batching} ({self.replica_mode})"

    @property
    def deployment(self) -> Deployment:
        server = "triton" if self.front_end.startswith("triton") else self.front_end
        return Deployment(
            server=server,  # type: ignore[arg-type]
            model=self.model,
            batching=self.batching,
            replicas=self.replicas,
            replica_mode=self.replica_mode,
            variant=self.variant if server == "baseline" else "",
        )

    def locust_user(self) -> str:
        if self.front_end == "triton-http":
            return "TritonHttpUser"
        if self.front_end == "triton-grpc":
            return "TritonGrpcUser"
        if self.model in DETECTORS:
            return "DetectionUser"
        return "DigitUser" if self.model == "digits" else "PhotoUser"


def cells(  # noqa: PLR0917 (one argument per axis of the matrix)
    front_ends: tuple[str, ...] = FRONT_ENDS,
    models: tuple[str, ...] = MODELS,
    variants: tuple[str, ...] = VARIANTS,
    batching: tuple[bool, ...] = (True, False),
    replicas: tuple[int, ...] = REPLICAS,
    replica_modes: tuple[str, ...] = REPLICA_MODES,
) -> list[Cell]:
    """Every cell of the chosen axes that exists: the baseline never batches (it is listed
    unbatched whatever `batching` says), `workers` is BentoML's own setting, one replica
    is the same in both modes (listed as `nginx`), and the baseline serves no detector."""
    found: dict[Cell, None] = {}
    for front, model, variant, batch, count, mode in itertools.product(
        front_ends, models, variants, batching, replicas, replica_modes
    ):
        if mode == "workers" and front != "bentoml" and count > 1:
            continue
        if model in DETECTORS and front == "baseline":
            continue
        cell = Cell(
            front_end=front,  # type: ignore[arg-type]
            model=model,
            variant=variant,
            batching=batch and front != "baseline",
            replicas=count,
            replica_mode="nginx" if count == 1 else mode,  # type: ignore[arg-type]
        )
        found[cell] = None
    return list(found)


def by_deployment(chosen: list[Cell]) -> dict[Deployment, list[Cell]]:
    """Cells grouped by the servers they need, in the order first needed."""
    grouped: dict[Deployment, list[Cell]] = {}
    for cell in chosen:
        grouped.setdefault(cell.deployment, []).append(cell)
    return grouped
