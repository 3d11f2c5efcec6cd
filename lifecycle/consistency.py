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

from lifecycle.registry import CHAMPION, Registry, digest
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
    served = {entry.version for entry in entries.values()}
    if len(served) > 1:
        raise RegistryError(
            f"{root}: the variants of {family} serve different versions "
            f"({', '.join(f'{v}: {e.version}' for v, e in sorted(entries.items()))})"
        )
    version = served.pop()
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
    if champion != version or any(_number(s) != champion for s in stamped.values()):
        raise RegistryError(
            f"the registry {registry.where} says version {champion} of {family} is the "
            f"champion; the repository {root} serves version {version}. Serve the champion "
            f"with: python -m offline promote {family} {champion} (or make version {version} "
            f"the champion with: python -m offline promote {family} {version})"
        )
    registered = registry.version(family, champion)
    if set(entries) != set(registered.variants):
        raise RegistryError(
            f"{family} version {champion}: the registry holds variants "
            f"{', '.join(registered.variants)}, the repository {root} "
            f"{', '.join(sorted(entries))}; restore them with: python -m offline promote "
            f"{family} {champion}"
        )
    for variant, entry in entries.items():
        if digest(entry.onnx_path) != registered.digests[variant]:
            raise RegistryError(
                f"{entry.onnx_path} is not the file registered as {family} version {champion} "
                f"({variant}): it was built or changed outside the registry; restore it "
                f"with: python -m offline promote {family} {champion}"
            )
    return Standing(family, version, registered=True)


def _number(stamp: dict[str, Any]) -> int | None:
    value = stamp.get("version")
    return int(value) if isinstance(value, int) else None
