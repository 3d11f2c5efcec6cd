"""Drift checks on a schedule in a running service, off the request path and off its
interpreter: each check is `python -m monitoring drift` in a subprocess (Evidently and pandas
are heavy imports and long stretches of Python that would hold the serving worker's
interpreter lock), and the worker only reads the summary it stores and sets the gauges.

    monitor = DriftMonitor(repository, families, publish=...)
    monitor.start()          # on the event loop of one entry worker
    await monitor.check_all()

`publish(family, summary | None, outcome)` records a check: the gauges of the service
(`serving.metrics`), `outcome` one of computed | too_few_rows | failed. `on_drift(family,
summary)`, when given, is called (in a thread) after a computed check that found drift: the
service starts a retrain there when `IMGSERVE_RETRAIN_ON_DRIFT` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monitoring.drift import latest
from monitoring.settings import DriftSettings
from runners.settings import REPO_ROOT

log = logging.getLogger(__name__)

TOO_FEW_ROWS = 3  # the drift command's exit status for a window it cannot judge
Publish = Callable[[str, dict[str, Any] | None, str], None]
OnDrift = Callable[[str, dict[str, Any]], None]


class DriftMonitor:
    """Each `drift_interval_s`, one drift check per served family, one after another."""

    def __init__(
        self,
        repository: Path,
        families: tuple[str, ...],
        publish: Publish,
        settings: DriftSettings | None = None,
        on_drift: OnDrift | None = None,
    ) -> None:
        self.repository = repository
        self.families = families
        self.publish = publish
        self.on_drift = on_drift
        self.settings = settings or DriftSettings()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Publish the stored checks (a restart keeps its gauges), then check on a schedule."""
        for family in self.families:
            summary = latest(family, self.settings)
            if summary is not None:
                self.publish(family, summary, "stored")
        if self.settings.drift_interval_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.drift_interval_s)
            try:
                await self.check_all()
            except Exception:
                log.exception("drift monitor")

    async def check_all(self) -> None:
        for family in self.families:
            await self.check(family)

    async def check(self, family: str) -> str:
        """One check of `family`'s last `drift_window_s`; its outcome."""
        settings = self.settings
        command = [
            sys.executable, "-m", "monitoring", "drift", "--model", family,
            "--window-s", str(settings.drift_window_s), "--min-rows", str(settings.drift_min_rows),
            "--repository", str(self.repository),
        ]  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=REPO_ROOT,  # this project's packages, as the service imports them
            env={**os.environ, "IMGSERVE_DATA_DIR": str(settings.data_dir.resolve())},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a SIGTERM to the worker's group leaves it to finish or die
        )
        try:
            _, errors = await asyncio.wait_for(process.communicate(), settings.drift_timeout_s)
        except TimeoutError:
            await _end(process)
            log.error("drift check of %s: no answer within %g s", family, settings.drift_timeout_s)
            self.publish(family, None, "failed")
            return "failed"
        except asyncio.CancelledError:  # the service stops
            await _end(process)
            raise
        said = errors.decode(errors="replace").strip().splitlines()[-1:] or [""]
        if process.returncode == 0:
            summary = latest(family, settings)
            self.publish(family, summary, "computed")
            if summary is not None and summary.get("drifted") and self.on_drift is not None:
                try:
                    await asyncio.to_thread(self.on_drift, family, summary)
                except Exception:  # a failed reaction never stops the checks
                    log.exception("drift of %s: the reaction to it failed", family)
            return "computed"
        if process.returncode == TOO_FEW_ROWS:
            log.info("drift check of %s: %s", family, said[0])
            self.publish(family, None, "too_few_rows")
            return "too_few_rows"
        log.error("drift check of %s failed (exit %s): %s", family, process.returncode, said[0])
        self.publish(family, None, "failed")
        return "failed"


async def _end(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await process.wait()
