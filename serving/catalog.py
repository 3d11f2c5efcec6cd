"""What this server serves: the chosen families' variants from the model repository.

The catalog is the closed set every metric label comes from (model, variant, backend), and
the one place a request's model and variant are resolved; an unknown one is a NotFound that
names what exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from runners.errors import NotFound, RepositoryError, ServingError
from runners.offering import measurement_note, offer
from runners.precision import DESCRIPTIONS
from runners.repository import ModelEntry, Repository, read_model
from runners.settings import BackendSettings
from runners.tasks import Task, get_task
from runners.tensors import Tensors
from serving.settings import ServingSettings


@dataclass(frozen=True)
class Served:
    """One served variant: its repository entry and the engine that runs it."""

    entry: ModelEntry
    backend: str

    @property
    def key(self) -> str:
        """The runner service's name: unique, and a valid Python identifier."""
        return f"runner_{self.entry.name}"

    @property
    def labels(self) -> dict[str, str]:
        return {"model": self.entry.family, "variant": self.entry.variant, "backend": self.backend}

    @cached_property
    def task(self) -> Task:
        return get_task(self.entry.task)

    def sample_inputs(self, count: int) -> Tensors:
        """Zeros for every model input: what warms the whole path up."""
        return {t.name: np.zeros((count, *t.dims), dtype=t.numpy_dtype) for t in self.entry.inputs}


class Catalog:
    def __init__(self, settings: ServingSettings, backend_settings: BackendSettings) -> None:
        repository = Repository(settings.repository, batching=settings.batching)
        families = repository.families()
        missing = [name for name in settings.models if name not in families]
        if missing:
            raise RepositoryError(
                f"{settings.repository} has no model {', '.join(map(repr, missing))}; "
                f"models: {', '.join(sorted(families))}"
            )
        offers = {family: offer(families[family], backend_settings) for family in settings.models}
        self.variants: dict[str, dict[str, Served]] = {
            family: {
                variant: Served(entry, backend) for variant, (entry, backend) in o.offered.items()
            }
            for family, o in offers.items()
        }
        # Variants this server does not offer, with the reason a request naming one is told.
        self.withheld: dict[str, dict[str, str]] = {f: o.withheld for f, o in offers.items()}
        self.default_model = settings.default_model or settings.models[0]
        if self.default_model not in self.variants:
            raise RepositoryError(
                f"default model {self.default_model!r} is not served; served: "
                f"{', '.join(self.variants)}"
            )
        self.default_variant = settings.default_variant
        if self.default_variant not in self.variants[self.default_model]:
            why = self.withheld[self.default_model].get(
                self.default_variant, "not in the repository"
            )
            raise RepositoryError(
                f"default variant {self.default_variant!r} of {self.default_model!r}: {why}"
            )

    def __iter__(self) -> Any:
        return (served for variants in self.variants.values() for served in variants.values())

    def resolve(self, model: str | None, variant: str | None) -> Served:
        """The served variant a request names; defaults fill what it leaves out."""
        model = model or self.default_model
        variant = variant or self.default_variant
        if model not in self.variants:
            raise NotFound(f"unknown model {model!r}; models: {', '.join(sorted(self.variants))}")
        if variant not in self.variants[model]:
            why = self.withheld[model].get(variant)
            raise NotFound(
                f"model {model!r} has no variant {variant!r}"
                + (f" here ({why})" if why else "")
                + f"; variants: {', '.join(sorted(self.variants[model]))}"
            )
        return self.variants[model][variant]

    def describe(self) -> dict[str, Any]:
        """Models and variants with their model-card figures, for GET /v1/models."""
        models = []
        for family, variants in self.variants.items():
            first = next(iter(variants.values())).entry
            card = first.card() or {}
            models.append(
                {
                    "model": family,
                    "summary": card.get("summary"),
                    "task": first.task,
                    "labels": list(first.labels),
                    "input": {
                        "shape": list(first.inputs[0].dims),
                        "color_mode": first.preprocess.color_mode,
                    },
                    "evaluation": card.get("evaluation"),
                    "figures": measurement_note(card),
                    "registry": first.registration(),
                    "variants": [_variant(served, card) for served in variants.values()],
                    "not_offered": dict(self.withheld[family]),
                }
            )
        return {
            "default_model": self.default_model,
            "default_variant": self.default_variant,
            "models": models,
        }


def _current(entry: ModelEntry) -> ModelEntry:
    """The variant as its directory says now: a rollout or a promotion since start-up changes
    its champion and challenger (runners.versions follows the same directory)."""
    try:
        return read_model(entry.directory)
    except ServingError:  # between the two renames of a swap: the entry served at start
        return entry


def _variant(served: Served, card: dict[str, Any]) -> dict[str, Any]:
    entry = served.entry
    now = _current(entry)
    figures = card.get("evaluation") or {}
    return {
        "variant": entry.variant,
        "name": entry.name,
        "version": now.version,
        "challenger": None if now.rollout is None else now.rollout.challenger,
        "backend": served.backend,
        "precision": entry.precision,
        "runs_in": DESCRIPTIONS[entry.precision],
        "top1": figures.get(f"{entry.variant}_top1"),
        "map50": figures.get(f"{entry.variant}_map50"),  # a detector's
        "bytes": (card.get("files") or {}).get(f"{entry.variant}_bytes"),
        "max_batch_size": entry.batching.max_batch_size,
        "performance": [
            row for row in card.get("performance", []) if row.get("variant") == entry.variant
        ],
    }
