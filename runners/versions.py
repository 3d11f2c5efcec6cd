"""The loaded versions of one served variant, kept in step with its repository directory.

A server loads what the variant's `config.pbtxt` names: the champion, and during a rollout a
challenger beside it (`runners.repository.Rollout`). The directory is polled; when its
config changes, a version it now names is loaded and warmed in the background while the
loaded ones keep answering, and only then does the new state take over, in one reference
swap. A version no longer named is dropped from the state at that swap; a batch already
running on it finishes on it (it holds its own reference), so nothing admitted is lost.

Each row of a batch carries the version its request asked for (0: the router's choice) and
the request's draw in [0, 1); every row of one request has the same draw, so one request is
answered by one version. The answer says, per row, the version that produced it: N > 0 it
answered, -N it failed the row (its engine raised; the other versions' rows are answered),
0 the pinned version is not loaded. Shadowed rows also run on the challenger, and the two
outputs are compared by the task; a shadow that fails changes no answer. The answer also says,
per row, how its shadow went: 0 not shadowed, +C the challenger C agreed, -C it disagreed (a
disagreement is what the review queue asks a person about).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runners.errors import ServingError
from runners.model import LoadedModel
from runners.repository import CONFIG_FILE, ModelEntry, Rollout, read_model
from runners.tensors import RowSpec, Tensors, take_rows

log = logging.getLogger(__name__)

REQUESTED = "project.requested_version"  # input column: the version asked for, 0 = any
DRAW = "project.draw"  # input column: the request's draw in [0, 1)
ANSWERED = "project.version"  # output column: the version that answered (see above)
SHADOW = "project.shadow"  # output column: the shadow's verdict per row (see above)
NOT_LOADED = 0

Loader = Callable[[ModelEntry], LoadedModel]


@dataclass(frozen=True)
class Column:
    """One float per row beside a model's tensors (a `runners.tensors.RowSpec`)."""

    name: str
    dims: tuple[int, ...] = (1,)


def request_specs(entry: ModelEntry) -> tuple[RowSpec, ...]:
    """What a batch carries to a version set: the model's inputs and the routing columns."""
    return (*entry.inputs, Column(REQUESTED), Column(DRAW))


def answer_specs(entry: ModelEntry) -> tuple[RowSpec, ...]:
    """What comes back: the model's outputs, the version and the shadow's verdict per row."""
    return (*entry.outputs, Column(ANSWERED), Column(SHADOW))


def route_columns(count: int, version: int | None, draw: float) -> Tensors:
    """The routing columns of one request's `count` rows."""
    return {
        REQUESTED: np.full((count, 1), version or 0, np.float32),
        DRAW: np.full((count, 1), draw, np.float32),
    }


@dataclass(frozen=True)
class State:
    """What serves now: loaded models by version, the champion, the rollout."""

    models: dict[int, LoadedModel]
    champion: int
    rollout: Rollout | None = None

    @property
    def challenger(self) -> int | None:
        return None if self.rollout is None else self.rollout.challenger


@dataclass
class Routed:
    """A batch's outputs in row order, the version per row, the shadow comparisons, and the
    shadow's verdict per row (`SHADOW`'s values)."""

    outputs: Tensors
    versions: np.ndarray
    shadows: list[tuple[int, int, np.ndarray, np.ndarray]] = field(default_factory=list)
    shadowed: np.ndarray | None = None

    def verdicts(self) -> np.ndarray:
        """The shadow's verdict per row: 0 not shadowed, +C agreed with C, -C disagreed."""
        if self.shadowed is None:
            return np.zeros(len(self.versions), np.int64)
        return self.shadowed


def _stamp(directory: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(directory / CONFIG_FILE)
    except OSError:  # between the two renames of a directory being replaced
        return None
    return stat.st_ino, stat.st_mtime_ns


class VersionSet:
    """One variant's loaded versions, the routing of rows between them, and their refresh."""

    def __init__(self, entry: ModelEntry, loader: Loader, poll_s: float = 0.5) -> None:
        self.directory = entry.directory
        self.loader = loader
        self.poll_s = poll_s
        self._seen = _stamp(self.directory)
        models = {version: loader(entry.at_version(version)) for version in entry.versions}
        self.state = State(models, entry.version, entry.rollout)
        self.entry = entry
        self._lock = threading.Lock()  # one refresh at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    @property
    def versions(self) -> tuple[int, ...]:
        state = self.state
        return tuple(sorted(state.models))

    def refresh(self) -> bool:
        """Follow the directory: True when the state changed. A version that fails to load
        leaves the state as it is (and the reason in `last_error`, and the log)."""
        with self._lock:
            seen = _stamp(self.directory)
            if seen is None or seen == self._seen:
                return False
            try:
                entry = read_model(self.directory)
            except ServingError as exc:  # half-written: the next poll sees the whole
                log.warning("%s: %s", self.directory, exc.message)
                return False
            current = self.state
            models = {}
            try:
                for version in entry.versions:
                    models[version] = current.models.get(version) or self.loader(
                        entry.at_version(version)
                    )
            except ServingError as exc:
                self.last_error = exc.message
                log.error("%s: keeping versions %s: %s", entry.name, self.versions, exc.message)
                self._seen = seen
                return False
            self.entry = entry
            self.state = State(models, entry.version, entry.rollout)
            self._seen = seen
            self.last_error = None
        log.info(
            "%s: champion %d%s", entry.name, entry.version,
            f", challenger {entry.rollout.challenger} (canary {entry.rollout.canary_share:g}, "
            f"shadow {entry.rollout.shadow_share:g})" if entry.rollout else "",
        )  # fmt: skip
        return True

    def start(self) -> None:
        """Poll the directory in a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._poll, name=f"versions-{self.entry.name}", daemon=True
            )
            self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.refresh()
            except Exception:  # the poller must outlive any one bad state of the directory
                log.exception("%s: refresh failed", self.directory)

    def run(self, inputs: Tensors) -> Routed:
        """A batch's outputs (its version columns taken out), each row run on its version."""
        state = self.state  # one state for the whole batch
        requested = inputs.pop(REQUESTED, None)
        draws = inputs.pop(DRAW, None)
        count = len(next(iter(inputs.values())))
        asked = np.zeros(count, np.int64) if requested is None else requested.reshape(-1)
        drawn = np.ones(count) if draws is None else draws.reshape(-1)
        versions = np.full(count, state.champion, np.int64)
        shadow = np.zeros(count, bool)
        rollout = state.rollout
        if rollout is not None:
            canary = drawn < rollout.canary_share
            versions[canary] = rollout.challenger
            shadow = ~canary & (drawn < rollout.canary_share + rollout.shadow_share)
        pinned = asked > 0
        versions[pinned] = asked[pinned]
        shadow &= ~pinned
        versions[~np.isin(versions, list(state.models))] = NOT_LOADED
        return self._run(state, inputs, versions, shadow)

    def _run(
        self, state: State, inputs: Tensors, versions: np.ndarray, shadow: np.ndarray
    ) -> Routed:
        present = [int(v) for v in np.unique(versions) if v != NOT_LOADED]
        if len(present) == 1 and (versions == present[0]).all() and not shadow.any():
            outputs = state.models[present[0]].run(inputs)  # the common case: one version
            return Routed(outputs, versions)
        parts: dict[int, Tensors] = {}
        answered = versions.copy()
        for version in present:
            rows = np.flatnonzero(versions == version)
            try:
                parts[version] = state.models[version].run(_rows(inputs, rows))
            except Exception:
                log.exception("%s version %d failed %d rows", self.entry.name, version, len(rows))
                answered[rows] = -version
        outputs = _scatter(parts, versions, len(versions), self.entry)
        routed = Routed(outputs, answered)
        challenger = state.challenger
        shadow &= answered == state.champion
        if shadow.any() and challenger is not None:
            rows = np.flatnonzero(shadow)
            try:
                theirs = state.models[challenger].run(_rows(inputs, rows))
                ours = _rows(outputs, rows)
                task = state.models[state.champion].task
                agree, difference = task.compare(self.entry, ours, theirs)
            except Exception:
                log.exception("%s: shadow run on version %d failed", self.entry.name, challenger)
                agree, difference = np.zeros(len(rows), bool), np.ones(len(rows))
            else:  # a failed shadow run is counted as disagreement, but asks no person
                verdicts = np.zeros(len(versions), np.int64)
                verdicts[rows] = np.where(agree, challenger, -challenger)
                routed.shadowed = verdicts
            routed.shadows.append((state.champion, challenger, agree, difference))
        return routed


def _rows(tensors: Tensors, rows: np.ndarray) -> Tensors:
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
        return take_rows(tensors, int(rows[0]), int(rows[-1]) + 1)
    return {name: array[rows] for name, array in tensors.items()}


def _scatter(
    parts: dict[int, Tensors], versions: np.ndarray, count: int, entry: ModelEntry
) -> Tensors:
    """Each version's outputs put back in their rows; other rows are zeros."""
    outputs = {t.name: np.zeros((count, *t.dims), t.numpy_dtype) for t in entry.outputs}
    for version, part in parts.items():
        rows = np.flatnonzero(versions == version)
        for name, array in part.items():
            outputs[name][rows] = array
    return outputs
