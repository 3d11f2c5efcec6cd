"""What a comparison run measured: `summary.json`'s schema, and the capacity rule.

Capacity at the p99 target: the highest throughput of any step of the step load whose p99
stayed at or under the target with no error and nothing shed. A cell where no step met it
has capacity 0 (`capacity_met` false). The step load runs twice: coarse steps, then a few
steps between the capacity step and the next (`refine_users`), so the knee is found finer.
The capacity planner reads `cells[*]` with
`front_end, model, variant, batching, replicas, replica_mode, capacity_rps, p99_target_ms`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class Step(BaseModel):
    """One step of the step load, measured after it settled."""

    users: int
    duration_s: float
    requests: int
    errors: int
    shed: int
    requests_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    wrong_labels: int
    batch_size: float | None = Field(description="Server-side mean batch size (Prometheus).")
    queue_wait_ms: float | None = Field(description="Server-side mean queue wait (Prometheus).")
    within_target: bool


class CpuUse(BaseModel):
    """CPU seconds used during the cell's step load, by whom (the machine has `cores`)."""

    wall_s: float
    servers_s: float
    balancer_s: float
    generator_s: float
    prometheus_s: float
    other_s: float = Field(description="Everything else on the machine in that time.")


class CellResult(BaseModel):
    key: str
    front_end: str
    model: str
    variant: str
    batching: bool
    replicas: int
    replica_mode: str
    locust_user: str
    p99_target_ms: float
    capacity_rps: float
    capacity_met: bool
    capacity_users: int | None
    peak_rps: float = Field(description="Highest step throughput with no error (any p99).")
    requests: int
    errors: int
    shed: int
    error_ratio: float
    shed_ratio: float
    right_labels: int
    wrong_labels: int
    steps: list[Step]
    cpu: CpuUse
    csv_prefix: str
    refined_users: list[int] = Field(
        default_factory=list, description="User counts of the second, finer pass (if any)."
    )

    @property
    def capacity_step(self) -> Step | None:
        return next((s for s in self.steps if s.users == self.capacity_users), None)

    @property
    def configuration(self) -> str:
        batching = "batching" if self.batching else "no batching"
        return f"{self.front_end} {self.model} {self.variant} {batching} ({self.replica_mode})"


class Machine(BaseModel):
    cpu_model: str
    cores: int
    memory_gib: float
    platform: str


class Summary(BaseModel):
    created: str
    command: str
    machine: Machine
    subset: dict[str, list[str]]
    step_s: float
    settle_s: float
    warmup_s: float
    step_users: dict[str, list[int]]
    p99_target_ms: dict[str, float]
    startup_s: dict[str, float]
    other_processes_cpu_s: dict[str, float] = Field(
        description="CPU seconds of the busiest processes this run did not start."
    )
    cells: list[CellResult]


def capacity(steps: list[Step]) -> Step | None:
    """The step with the highest throughput among those within the target."""
    within = [s for s in steps if s.within_target]
    return max(within, key=lambda s: s.requests_per_s) if within else None


def refine_users(steps: list[Step], most: int = 2) -> list[int]:
    """User counts between the capacity step and the next larger one, spaced geometrically:
    the second pass of the step load, so capacity is found near the knee rather than at the
    coarse steps. None when the coarse steps leave no gap (capacity at the top step, or
    adjacent counts); below the smallest step when even it missed the target."""
    ordered = sorted(steps, key=lambda s: s.users)
    best = capacity(ordered)
    low = best.users if best else 0
    above = [s.users for s in ordered if s.users > low]
    if not above:
        return []
    high = above[0]
    if low == 0:
        return list(range(1, high))[-most:]
    points = {round(low * (high / low) ** (k / (most + 1))) for k in range(1, most + 1)}
    return sorted(n for n in points if low < n < high)


def within_target(p99_ms: float | None, errors: int, shed: int, target_ms: float) -> bool:
    return p99_ms is not None and p99_ms <= target_ms and errors == 0 and shed == 0
