"""Registry and repository agree on each served family, or a front end does not start.

Agreement means: every variant directory of the family serves the same version; it is the
version the registry's `champion` alias names (and the one its `registry.json` stamp names,
where `promote` wrote one); the variants are the version's variants, and each model file is
the one the version recorded (SHA-256): the digests are what make the two the same model,
not the numbers alone. A family no registry knows and no stamp claims is served
unregistered, with a warning (a model built in a test or by hand). Otherwise any difference
stops the front end with a message that names both sides and the command that reconciles
them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle.registry import CHALLENGER, CHAMPION, Registry, digest
from lifecycle.settings import RegistrySettings
from runners.errors import RegistryError
from runners.repository import REGISTRY_STAMP, ModelEntry, Repository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Standing:
    """What the registry says about one served family."""

    family: str
    version: int
    registered: bool


def check(
    root: Path, families: Iterable[str], settings: RegistrySettings | None = None
) -> dict[str, Standing]:
    """Each named family's standing (every family of the repository when none is named);
    RegistryError when the registry and the repository disagree about one."""
    grouped = Repository(root).families()
    registry = Registry(settings)
    return {
        family: _check(registry, root, family, grouped[family])
        for family in (tuple(families) or tuple(sorted(grouped)))
        if family in grouped
    }


def _check(registry: Registry, root: Path, family: str, entries: dict[str, ModelEntry]) -> Standing:
    served = {entry.versions for entry in entries.values()}
    if len(served) > 1:
        raise RegistryError(
            f"{root}: the variants of {family} serve different versions "
            f"({', '.join(f'{v}: {e.versions}' for v, e in sorted(entries.items()))})"
        )
    first = next(iter(entries.values()))
    version, rollout = first.version, first.rollout
    stamps = {variant: entry.registration() for variant, entry in entries.items()}
    stamped = {variant: s for variant, s in stamps.items() if s is not None}
    known = registry.known(family)
    if not known and not stamped:
        log.warning(
            "%s version %d in %s is not in the model registry %s: serving it unregistered",
            family, version, root, registry.where,
        )  # fmt: skip
        return Standing(family, version, registered=False)
    if not known:
        claimed = next(iter(stamped.values()))
        raise RegistryError(
            f"{root}: {family} was written from version {claimed.get('version')} of the "
            f"registry {claimed.get('registry')}, but the registry {registry.where} has no "
            f"model {family!r}: point IMGSERVE_REGISTRY_URI (or IMGSERVE_DATA_DIR) at its "
            f"registry, or delete the {REGISTRY_STAMP} files to serve it unregistered"
        )
    champion = registry.alias(family, CHAMPION)
    if champion is None:
        raise RegistryError(
            f"the registry {registry.where} has versions of {family} but no champion; serve "
            f"one with: python -m offline promote {family} N"
        )
    if champion != version and _interrupted(registry, family, version, entries, stamped):
        log.warning(
            "%s: finishing the promotion of version %d that stopped before the registry's "
            "alias moved (the repository was written)", family, version,
        )  # fmt: skip
        registry.set_alias(family, CHAMPION, version)
        registry.clear_alias(family, CHALLENGER)
        champion = version
    if champion != version or any(_number(s) != champion for s in stamped.values()):
        raise RegistryError(
            f"the registry {registry.where} says version {champion} of {family} is the "
            f"champion; the repository {root} serves version {version}. Serve the champion "
            f"with: python -m offline promote {family} {champion} (or make version {version} "
            f"the champion with: python -m offline promote {family} {version})"
        )
    if rollout is not None:
        challenger = registry.alias(family, CHALLENGER)
        if challenger != rollout.challenger:
            raise RegistryError(
                f"the repository {root} rolls out version {rollout.challenger} of {family}; "
                f"the registry {registry.where} names "
                + (f"version {challenger}" if challenger else "no version")
                + f" its challenger. Roll it back with: python -m lifecycle rollback {family}"
            )
        _same_files(registry, root, family, rollout.challenger, entries, challenger=True)
    _same_files(registry, root, family, champion, entries, challenger=False)
    return Standing(family, version, registered=True)


def _same_files(
    registry: Registry,
    root: Path,
    family: str,
    number: int,
    entries: dict[str, ModelEntry],
    *,
    challenger: bool,
) -> None:
    registered = registry.version(family, number)
    if set(entries) != set(registered.variants):
        raise RegistryError(
            f"{family} version {number}: the registry holds variants "
            f"{', '.join(registered.variants)}, the repository {root} "
            f"{', '.join(sorted(entries))}; restore them with: python -m offline promote "
            f"{family} {number}"
        )
    for variant, entry in entries.items():
        path = entry.at_version(number).onnx_path
        if digest(path) != registered.digests[variant]:
            fix = (
                f"python -m lifecycle rollback {family}"
                if challenger
                else f"python -m offline promote {family} {number}"
            )
            raise RegistryError(
                f"{path} is not the file registered as {family} version {number} "
                f"({variant}): it was built or changed outside the registry; restore it "
                f"with: {fix}"
            )


def _interrupted(
    registry: Registry,
    family: str,
    version: int,
    entries: dict[str, ModelEntry],
    stamped: dict[str, dict[str, Any]],
) -> bool:
    """Whether the repository holds a finished promotion of the registry's challenger (every
    variant stamped with it, its files the registered ones) whose alias move did not happen."""
    if registry.alias(family, CHALLENGER) != version or len(stamped) != len(entries):
        return False
    if any(_number(stamp) != version for stamp in stamped.values()):
        return False
    registered = registry.version(family, version)
    return all(
        registered.digests.get(variant) == digest(entry.onnx_path)
        for variant, entry in entries.items()
    )


def _number(stamp: dict[str, Any]) -> int | None:
    value = stamp.get("version")
    return int(value) if isinstance(value, int) else None
