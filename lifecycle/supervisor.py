"""Rollouts in a running server, either front end: the operations and the controller loop.

The operations are `lifecycle.rollout`'s. Those that call the registry run in one helper
process that opens the registry when the server starts (`prepare`): MLflow's import and its
calls are long stretches of Python that, in the serving process, would hold the interpreter
lock every request needs. The runners follow the repository by themselves. The controller
(`lifecycle.controller`) runs as one task on an event loop (BentoML: the first entry
worker's; Triton: the launcher's controller thread): each interval it reads the served
families' rollouts from the repository and the server's own metrics, and promotes or rolls
back a rollout that asks for it (`decide`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import anyio.to_thread

from lifecycle import rollout as operations
from lifecycle.controller import Decision, RolloutSettings, Samples, Watch, describe, parse
from lifecycle.registry import Registry
from runners.errors import ServingError

log = logging.getLogger(__name__)

_OPENED: dict[str, Registry] = {}  # in the helper process: "registry"
PARENT_POLL_S = 1.0  # how often the helper process looks for its serving process


def _exit_with_parent(parent: int) -> None:
    """End the helper process once the serving process is gone. A serving process killed
    outright (kill -9) never shuts its pool down, and a pool worker would wait on its call
    queue for ever: it holds that queue's write end itself, so it never sees the queue end."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(0)


def _open(families: tuple[str, ...]) -> None:
    """The helper process's start: watch the serving process, import MLflow and make a first
    call to its store."""
    threading.Thread(
        target=_exit_with_parent, args=(os.getppid(),), name="parent-watch", daemon=True
    ).start()
    registry = _OPENED["registry"] = Registry()
    try:
        for family in families:
            if registry.known(family):  # else served unregistered: nothing to roll out yet
                registry.aliases(family)
    except ServingError as exc:  # the operations will say why they fail
        logging.getLogger(__name__).warning("the registry did not open: %s", exc.message)


def _samples(read_metrics: Callable[[], str]) -> Samples:
    return parse(read_metrics())


def _versions(family: str) -> list[dict[str, Any]]:
    """Every registered version of `family`, oldest first (none when it is served without
    being registered), in the helper process."""
    registry = _OPENED["registry"]
    if not registry.known(family):
        return []
    return [version.describe() for version in registry.versions(family)]


def _operation(name: str, *args: Any, **kwargs: Any) -> Any:
    """`lifecycle.rollout.<name>(registry, ...)`, in the helper process."""
    return getattr(operations, name)(_OPENED["registry"], *args, **kwargs)


class Rollouts:
    """The served families' rollouts: start, shares, promote, roll back, and the controller.

    `read_metrics` returns the serving process's Prometheus text; `count_decision` counts a
    decision by model, decision and reason kind (`imgserve_rollout_decisions_total`). With
    `metrics_in_helper`, `read_metrics` (a module-level function) runs in the helper process:
    BentoML's metrics are files shared by its processes, and merging them is Python work that
    would hold the serving process's interpreter lock each interval; otherwise it runs in a
    thread here."""

    def __init__(
        self,
        repository: Path,
        families: tuple[str, ...],
        read_metrics: Callable[[], str],
        count_decision: Callable[[str, str, str], None],
        *,
        metrics_in_helper: bool = False,
    ) -> None:
        self.repository = repository
        self.families = families
        self.read_metrics = read_metrics
        self.count_decision = count_decision
        self.metrics_in_helper = metrics_in_helper
        self.settings = RolloutSettings()
        self.decisions: deque[Decision] = deque(maxlen=50)
        self.watches: dict[str, Watch] = {}
        self._task: asyncio.Task[None] | None = None
        self._helper: ProcessPoolExecutor | None = None
        self.prepared = False

    def prepare(self) -> None:
        """Start the helper process and wait until it has opened the registry (blocking: run
        it in a thread at start-up)."""
        if self._helper is None:
            self._helper = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_open,
                initargs=(self.families,),
            )
        self._helper.submit(int).result()
        self.prepared = True

    def close(self) -> None:
        if self._helper is not None:
            self._helper.shutdown(wait=True, cancel_futures=True)

    async def _in_helper(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._helper is None:
            await anyio.to_thread.run_sync(self.prepare)
        assert self._helper is not None
        return await asyncio.wrap_future(self._helper.submit(function, *args, **kwargs))

    async def _samples(self) -> Samples:
        if self.metrics_in_helper:
            found: Samples = await self._in_helper(_samples, self.read_metrics)
            return found
        return await anyio.to_thread.run_sync(_samples, self.read_metrics)

    # operations (registry ones in the helper process, the file-only one in a thread)

    async def start(
        self, family: str, version: int, canary: float, shadow: float, decide: bool
    ) -> dict[str, Any]:
        rollout = await self._in_helper(
            _operation, "start", self.repository, family, version,
            canary_share=canary, shadow_share=shadow, decide=decide,
        )  # fmt: skip
        self.watches.pop(family, None)  # a new baseline when the controller next looks
        return {"model": family, "rollout": rollout.model_dump()}

    async def shares(self, family: str, canary: float, shadow: float) -> dict[str, Any]:
        rollout = await anyio.to_thread.run_sync(
            operations.set_shares, self.repository, family, canary, shadow
        )
        return {"model": family, "rollout": rollout.model_dump()}

    async def promote(self, family: str, reason: str, figures: dict[str, Any]) -> dict[str, Any]:
        version = await self._in_helper(_operation, "finish", self.repository, family)
        return self._decided(family, "promote", reason, figures, version)

    async def rollback(self, family: str, reason: str, figures: dict[str, Any]) -> dict[str, Any]:
        version = await self._in_helper(_operation, "abort", self.repository, family, reason)
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

    async def versions(self, family: str) -> list[dict[str, Any]]:
        """The registry's versions of `family` with their aliases, oldest first."""
        found: list[dict[str, Any]] = await self._in_helper(_versions, family)
        return found

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
                samples = await self._samples()
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
    for check in ("error_ratio", "p99", "shed_ratio", "shadow_agreement"):
        if f"{check} breaks" in reason:
            return check
    if reason.startswith("held"):
        return "held"
    return "manual"
