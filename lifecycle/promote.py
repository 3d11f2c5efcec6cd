"""From the registry into the repository: build, register, promote, adopt.

The repository is written first and the `champion` alias moved after it, so a crash between
the two leaves a repository that names a version the registry's alias does not: the front
ends see that at start (lifecycle.consistency) and refuse, naming the command that finishes.
Each variant directory `promote` writes carries a stamp (`registry.json`: registry, version,
run, file digest) so a front end can say which registry version it serves without asking the
registry.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lifecycle.registry import CHALLENGER, CHAMPION, Registry, Version, digest
from runners.errors import RegistryError
from runners.repository import (
    CARD_JSON,
    CARD_MD,
    CONFIG_FILE,
    DRIFT_REFERENCE,
    MODEL_FILE,
    REGISTRY_STAMP,
    ModelEntry,
    read_model,
    write_model,
)

log = logging.getLogger(__name__)


def stamp(registry: Registry, version: Version, variant: str) -> str:
    """The registry.json text of one variant directory written from `version`."""
    return (
        json.dumps(
            {
                "registry": registry.where,
                "model": version.family,
                "version": version.number,
                "run_id": version.run_id,
                "variant": variant,
                "sha256": version.digests[variant],
            },
            indent=2,
        )
        + "\n"
    )


def family_entries(repository: Path, family: str) -> dict[str, ModelEntry]:
    """The family's variant directories in a repository, by variant."""
    found: dict[str, ModelEntry] = {}
    if not repository.is_dir():
        return found
    for path in sorted(repository.iterdir()):
        if path.is_dir() and not path.name.startswith(".") and (path / CONFIG_FILE).is_file():
            entry = read_model(path)
            if entry.family == family:
                found[entry.variant] = entry
    return found


def promote(registry: Registry, repository: Path, family: str, number: int) -> list[ModelEntry]:
    """Serve registry version `number` of `family` from `repository`, then make it champion.

    Every variant directory of the family is replaced whole (`write_model`: staged aside and
    renamed into place), a variant the version lacks is removed, and only then does the
    alias move. A challenger alias on this version is cleared: it is the champion now.
    """
    version = registry.version(family, number)
    with scratch(repository, f"promote-{family}") as tmp:
        work = Path(tmp)
        local = registry.download(family, number, work / "download")
        written: list[ModelEntry] = []
        for variant in version.variants:
            name = f"{family}_{variant}"
            staged = work / "staged" / name
            (staged / str(number)).mkdir(parents=True)
            for file in (local / variant).iterdir():
                into = staged / str(number) if file.name == MODEL_FILE else staged
                shutil.move(file, into / file.name)
            entry = read_model(staged, name=name, version=number)
            extras = {
                file: (staged / file).read_text()
                for file in (CARD_JSON, CARD_MD, DRIFT_REFERENCE)
                if (staged / file).is_file()
            }
            extras[REGISTRY_STAMP] = stamp(registry, version, variant)
            written.append(
                write_model(
                    entry.model_copy(update={"directory": repository / name}),
                    entry.onnx_path,
                    extras,
                )
            )
    for variant, stale in family_entries(repository, family).items():
        if variant not in version.variants:
            log.info("%s version %d has no %s variant: removing %s", family, number, variant,
                     stale.directory)  # fmt: skip
            shutil.rmtree(stale.directory)
    registry.set_alias(family, CHAMPION, number)
    if registry.aliases(family).get(CHALLENGER) == number:
        registry.clear_alias(family, CHALLENGER)
    log.info("%s version %d is the champion, served from %s", family, number, repository)
    return written


def scratch(repository: Path, prefix: str) -> tempfile.TemporaryDirectory[str]:
    """Scratch space on the repository's filesystem, so files are renamed, not copied (a
    dot folder: readers of the repository skip it)."""
    repository.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=f".{prefix}-", dir=repository)


@dataclass(frozen=True)
class Published:
    version: Version
    promoted: bool


def publish_built(
    registry: Registry,
    repository: Path,
    family: str,
    build: Callable[[Path], object],
    description: str,
    *,
    promote_anyway: bool = False,
) -> Published:
    """Build a family into a staging repository, register it, and serve it when the family
    has no champion yet (or `promote_anyway`); otherwise it becomes the challenger, put live
    with `python -m offline promote`."""
    with scratch(repository, f"build-{family}") as tmp:
        build(Path(tmp))
        version = registry.record(family, Path(tmp), description)
    champion = registry.alias(family, CHAMPION)
    if champion is None or promote_anyway:
        promote(registry, repository, family, version.number)
        return Published(version, promoted=True)
    registry.set_alias(family, CHALLENGER, version.number)
    return Published(version, promoted=False)


def adopt(registry: Registry, repository: Path, family: str) -> Version | None:
    """Register a family the repository already serves but no registry knows (the committed
    default model in a fresh clone): it becomes version 1 and the champion. Its directories
    stay as they are (no stamp: the committed files stay unchanged); the digests the version
    records are what tie them to it. None when there is nothing to adopt."""
    entries = family_entries(repository, family)
    if not entries or any(entry.registration() for entry in entries.values()):
        return None
    if registry.known(family):
        return None  # the repository disagrees with the registry: the front ends say so
    served = {entry.version for entry in entries.values()}
    version = registry.record(family, repository, "adopted from the model repository")
    if served != {version.number}:
        raise RegistryError(
            f"{repository} serves {family} version {', '.join(map(str, sorted(served)))} but "
            f"the registry {registry.where} numbered it {version.number}: promote it "
            f"(python -m offline promote {family} {version.number}) to serve it under that number"
        )
    for variant, entry in entries.items():
        if digest(entry.onnx_path) != version.digests[variant]:
            raise RegistryError(f"{entry.onnx_path} changed while it was being registered")
    registry.set_alias(family, CHAMPION, version.number)
    log.info("registered %s from %s as version %d (champion)", family, repository, version.number)
    return version
