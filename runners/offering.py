"""Which variants of a family a server offers on this CPU, and why it withholds the others.

Both front ends ask here, so a variant is offered (or not, with the same reason) alike on
BentoML and Triton. A variant that cannot run in its stated precision on this CPU or engine
is withheld rather than served in another precision; a family without a bf16 variant says
why it has none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runners.model import choose_backend
from runners.precision import CpuInfo, bf16_unavailable, this_cpu
from runners.repository import ModelEntry
from runners.settings import BackendSettings


@dataclass(frozen=True)
class Offer:
    """A family's variants: offered ones with the engine that runs each, withheld ones with
    the reason a client is told."""

    offered: dict[str, tuple[ModelEntry, str]] = field(default_factory=dict)
    withheld: dict[str, str] = field(default_factory=dict)


def offer(entries: Mapping[str, ModelEntry], settings: BackendSettings) -> Offer:
    """Sort a family's entries (variant -> entry) into offered and withheld."""
    result = Offer()
    for variant, entry in sorted(entries.items()):
        backend, why = choose_backend(entry, settings)
        if why is None:
            result.offered[variant] = (entry, backend)
        else:
            result.withheld[variant] = f"not offered: {why}"
    if "bf16" not in entries and entries:
        result.withheld["bf16"] = _no_bf16(next(iter(entries.values())))
    return result


def _no_bf16(entry: ModelEntry) -> str:
    missing = bf16_unavailable()
    if missing is not None:
        return f"not offered: {missing}"
    decision = (entry.card() or {}).get("bf16") or {}
    if decision.get("cpu_has_bf16"):
        return f"not published: {decision.get('reason', 'see the model card')}"
    return (
        f"not built on a CPU with BF16 (the model card was made on {measured_on(entry)}); "
        "`make models` measures and gates it on this one"
    )


def card_cpu(card: Mapping[str, Any]) -> CpuInfo | None:
    """The CPU a card's figures were measured on, when the card records it."""
    cpu = card.get("cpu")
    return CpuInfo.model_validate(cpu) if isinstance(cpu, dict) else None


def measured_on(entry: ModelEntry) -> str:
    card = entry.card() or {}
    cpu = card_cpu(card)
    return cpu.describe() if cpu is not None else str(card.get("machine", "an unrecorded CPU"))


def measurement_note(card: Mapping[str, Any]) -> dict[str, Any]:
    """Where a card's figures come from, and whether that is the CPU serving them now."""
    cpu = card_cpu(card)
    here = this_cpu()
    same = cpu is not None and cpu.same_as(here)
    note: dict[str, Any] = {
        "measured_on": cpu.describe() if cpu is not None else card.get("machine"),
        "serving_on": here.describe(),
        "measured_on_this_cpu": same,
    }
    if not same:
        note["note"] = (
            "the card's figures were measured on another CPU: throughput and the INT8 and "
            "BF16 ratios differ here (make bench-raw measures this one)"
        )
    return note
