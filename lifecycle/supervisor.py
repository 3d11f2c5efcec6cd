"""Rollouts in a running server, either front end: the operations and the controller loop.

The operations are `lifecycle.rollout`'s, run in a worker thread (they write the repository
and call the registry); the runners follow the repository by themselves. The controller
(`lifecycle.controller`) runs as one task on an event loop (BentoML: the first entry
worker's; Triton: the launcher's controller thread): each interval it reads the served
families' rollouts from the repository and the server's own metrics, and promotes or rolls
back a rollout that asks for it (`decide`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio.to_thread

from lifecycle import rollout as operations
from lifecycle.controller import Decision, RolloutSettings, Watch, describe, parse
from lifecycle.registry import Registry
from runners.errors import ServingError

log = logging.getLogger(__name__)


class Rollouts:
    """The served families' rollouts: start, shares, promote, roll back, and the controller.

    `read_metrics` returns the serving process's Prometheus text; `count_decision` counts a
    decision by model, decision and reason kind (`imgserve_rollout_decisions_total`)."""

    def __init__(
        self,
        repository: Path,
        families: tuple[str, ...],
        read_metrics: Callable[[], str],
        count_decision: Callable[[str, str, str], None],
    ) -> None:
        self.repository = repository
        self.families = families
        self.read_metrics = read_metrics
        self.count_decision = count_decision
        self.settings = RolloutSettings()
        self.decisions: deque[Decision] = deque(maxlen=50)
        self.watches: dict[str, Watch] = {}
        self._task: asyncio.Task[None] | None = None
        self._registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry()
        return self._registry

    # operations (each one a thread: files and the registry)

    async def start(
        self, family: str, version: int, canary: float, shadow: float, decide: bool
    ) -> dict[str, Any]:
        def run() -> Any:
            return operations.start(
                self.registry, self.repository, family, version,
                canary_share=canary, shadow_share=shadow, decide=decide,
            )  # fmt: skip

        rollout = await anyio.to_thread.run_sync(run)
        self.watches.pop(family, None)  # a new baseline when the controller next looks
        return {"model": family, "rollout": rollout.model_dump()}

    async def shares(self, family: str, canary: float, shadow: float) -> dict[str, Any]:
        rollout = await anyio.to_thread.run_sync(
            operations.set_shares, self.repository, family, canary, shadow
        )
        return {"model": family, "rollout": rollout.model_dump()}

    async def promote(self, family: str, reason: str, figures: dict[str, Any]) -> dict[str, Any]:
        version = await anyio.to_thread.run_sync(
            operations.finish, self.registry, self.repository, family
        )
        return self._decided(family, "promote", reason, figures, version)

    async def rollback(self, family: str, reason: str, figures: dict[str, Any]) -> dict[str, Any]:
        version = await anyio.to_thread.run_sync(
            operations.abort, self.registry, self.repository, family, reason
        )
        return self._decided(family, "rollback", reason, figures, version)

    def _decided(
        self, family: str, kind: str, reason: str, figures: dict[str, Any], version: int
    ) -> dict[str, Any]:
        self.watches.pop(family, None)
        decision = Decision(family, kind, reason, {"version": version, **figures})
        self.decisions.append(decision)
        self.count_decision(family, kind, _kind(reason))
        log.info("rollout decision: %s", json.dumps(describe(decision), default=str))
        return describe(decision)

    def status(self, family: str) -> dict[str, Any]:
        rollout = operations.rollout_of(self.repository, family)
        watch = self.watches.get(family)
        return {
            "model": family,
            "rollout": None if rollout is None else rollout.model_dump(),
            "watched_for_s": None if watch is None else round(watch.elapsed_s, 1),
            "decisions": [describe(d) for d in self.decisions if d.model == family],
            "thresholds": self.settings.model_dump(),
        }

    # the controller

    def run_controller(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.control())

    async def control(self, running: Callable[[], bool] = lambda: True) -> None:
        """Judge every interval while `running()` (or cancel the task)."""
        while running():
            await asyncio.sleep(self.settings.rollout_interval_s)
            try:
                await self.judge_all()
            except ServingError as exc:
                log.error("rollout controller: %s", exc.message)
            except Exception:
                log.exception("rollout controller")

    async def judge_all(self) -> None:
        samples = None
        for family in self.families:
            rollout = operations.rollout_of(self.repository, family)
            if rollout is None or not rollout.decide:
                self.watches.pop(family, None)
                continue
            if samples is None:
                samples = parse(self.read_metrics())
            champion = operations.current(self.repository, family)
            version = next(iter(champion.values())).version
            watch = self.watches.get(family)
            if watch is None or (watch.champion, watch.challenger) != (version, rollout.challenger):
                self.watches[family] = Watch(family, version, rollout.challenger, samples)
                continue
            decision, figures = watch.judge(samples, self.settings)
            if decision is None:
                continue
            reason = "; ".join(f"{check} {verdict}" for check, verdict in figures.checks.items())
            figures_dict = {k: v for k, v in vars(figures).items() if k != "checks"}
            figures_dict["checks"] = figures.checks
            if decision == "promote":
                await self.promote(family, f"held for the window: {reason}", figures_dict)
            else:
                await self.rollback(family, f"a threshold broke: {reason}", figures_dict)


def _kind(reason: str) -> str:
    """A closed-set label for a decision's reason."""
    for check in ("error_ratio", "p99", "shadow_agreement"):
        if f"{check} breaks" in reason:
            return check
    if reason.startswith("held"):
        return "held"
    return "manual"
