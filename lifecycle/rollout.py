"""A rollout: a registry version put beside the champion, then promoted or rolled back.

Every step is a rewrite of the family's variant directories (each one whole, staged beside it
and renamed into place) that the servers follow (`runners.versions`): `start` adds the
challenger's version folder and the rollout (`runners.repository.Rollout`: canary and shadow
shares) to each config; `set_shares` changes the shares; `finish` is `promote` of the
challenger (the repository first, then the registry's alias), after which the old champion
is unloaded once its running batches are done; `abort` drops the challenger. Registry
aliases follow: `challenger` while a rollout runs, `champion` when it is promoted.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lifecycle.promote import family_entries, promote, scratch
from lifecycle.registry import CHALLENGER, Registry
from runners.errors import Conflict, NotFound
from runners.repository import (
    CARD_JSON,
    CARD_MD,
    DRIFT_REFERENCE,
    MODEL_FILE,
    REGISTRY_STAMP,
    ModelEntry,
    Rollout,
    read_model,
    write_model,
)

log = logging.getLogger(__name__)

# What must be the same in two versions for one to take the other's traffic.
SIGNATURE = ("task", "inputs", "outputs", "labels", "preprocess")


def _extras(entry: ModelEntry) -> dict[str, str]:
    return {
        name: (entry.directory / name).read_text()
        for name in (CARD_JSON, CARD_MD, DRIFT_REFERENCE, REGISTRY_STAMP)
        if (entry.directory / name).is_file()
    }


def current(repository: Path, family: str) -> dict[str, ModelEntry]:
    entries = family_entries(repository, family)
    if not entries:
        raise NotFound(f"{repository} has no model {family!r}")
    return entries


def rollout_of(repository: Path, family: str) -> Rollout | None:
    return next(iter(current(repository, family).values())).rollout


def start(
    registry: Registry,
    repository: Path,
    family: str,
    number: int,
    *,
    canary_share: float = 0.0,
    shadow_share: float = 0.0,
    decide: bool = True,
) -> Rollout:
    """Load registry version `number` beside the champion with the given shares; `decide`:
    the rollout controller promotes or rolls it back on its own."""
    entries = current(repository, family)
    champion = next(iter(entries.values()))
    if champion.rollout is not None:
        raise Conflict(
            f"{family}: version {champion.rollout.challenger} is being rolled out; promote it "
            f"or roll it back first"
        )
    if number == champion.version:
        raise Conflict(f"{family}: version {number} is the champion already")
    version = registry.version(family, number)
    if set(version.variants) != set(entries):
        raise Conflict(
            f"{family} version {number} has variants {', '.join(version.variants)}; the "
            f"champion serves {', '.join(sorted(entries))}: promote it instead (no rollout)"
        )
    rollout = Rollout(
        challenger=number, canary_share=canary_share, shadow_share=shadow_share, decide=decide
    )
    with scratch(repository, f"rollout-{family}") as tmp:
        local = registry.download(family, number, Path(tmp) / "download")
        for variant, entry in entries.items():
            staged = Path(tmp) / "staged" / entry.name
            (staged / str(number)).mkdir(parents=True)
            for file in (local / variant).iterdir():
                into = staged / str(number) if file.name == MODEL_FILE else staged
                file.rename(into / file.name)
            challenger = read_model(staged, name=entry.name, version=number)
            different = [f for f in SIGNATURE if getattr(challenger, f) != getattr(entry, f)]
            if different:
                raise Conflict(
                    f"{family} version {number} differs from the champion in its "
                    f"{', '.join(different)}: it cannot take the champion's requests; promote "
                    f"it instead"
                )
            write_model(
                entry.model_copy(update={"rollout": rollout}),
                entry.onnx_path,
                _extras(entry),
                challenger_file=challenger.onnx_path,
            )
    registry.set_alias(family, CHALLENGER, number)
    log.info("%s: rolling out version %d beside %d: %s", family, number, champion.version, rollout)
    return rollout


def set_shares(repository: Path, family: str, canary_share: float, shadow_share: float) -> Rollout:
    """Change the running rollout's canary and shadow shares."""
    entries = current(repository, family)
    first = next(iter(entries.values()))
    if first.rollout is None:
        raise Conflict(f"{family}: no rollout is in progress")
    rollout = first.rollout.model_copy(
        update={"canary_share": canary_share, "shadow_share": shadow_share}
    )
    Rollout.model_validate(rollout.model_dump())  # the shares' bounds
    for entry in entries.values():
        write_model(
            entry.model_copy(update={"rollout": rollout}),
            entry.onnx_path,
            _extras(entry),
            challenger_file=entry.at_version(rollout.challenger).onnx_path,
        )
    return rollout


def finish(registry: Registry, repository: Path, family: str) -> int:
    """Promote the challenger: it serves alone, and it is the registry's champion."""
    rollout = rollout_of(repository, family)
    if rollout is None:
        raise Conflict(f"{family}: no rollout is in progress")
    promote(registry, repository, family, rollout.challenger)
    return rollout.challenger


def abort(registry: Registry, repository: Path, family: str, reason: str) -> int:
    """Roll back: the champion serves alone; the challenger is unloaded and its version is
    tagged with the reason in the registry."""
    entries = current(repository, family)
    first = next(iter(entries.values()))
    if first.rollout is None:
        raise Conflict(f"{family}: no rollout is in progress")
    challenger = first.rollout.challenger
    for entry in entries.values():
        write_model(entry.at_version(entry.version), entry.onnx_path, _extras(entry))
    if registry.aliases(family).get(CHALLENGER) == challenger:
        registry.clear_alias(family, CHALLENGER)
    registry.tag(family, challenger, "rolled_back", reason[:5000])
    log.info("%s: rolled back version %d: %s", family, challenger, reason)
    return challenger
