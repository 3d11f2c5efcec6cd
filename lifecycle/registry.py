"""The model registry: every built version of a model family, in MLflow, with aliases.

The only module that imports MLflow. A family is one registered model; each build is one MLflow
run (parameters: how it was built, preprocessing, quantization; metrics: held-out top-1 per
variant, agreements, sizes, raw throughput; tags: the CPU) whose artifacts are every variant's
files, and one numbered model version pointing at them:

    model/<variant>/model.onnx, config.pbtxt, labels.txt, model_card.json, model_card.md,
    drift_reference.json (monitoring.drift)

The version's tags hold each variant file's SHA-256, so what a repository serves can be told
apart from what the registry holds. Aliases (`champion`: what the repository serves,
`challenger`: a version recorded while another serves) replace MLflow's deprecated stages.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from lifecycle.settings import RegistrySettings
from runners.errors import NotFound, RegistryError
from runners.repository import (
    CARD_JSON,
    CARD_MD,
    CONFIG_FILE,
    DRIFT_REFERENCE,
    LABELS_FILE,
    MODEL_FILE,
    ModelEntry,
    read_model,
)

log = logging.getLogger(__name__)

ARTIFACT_PATH = "model"
CHAMPION = "champion"
CHALLENGER = "challenger"
ALIASES = (CHAMPION, CHALLENGER)
EXPERIMENT_PREFIX = "imgserve/"
VARIANT_FILES = (MODEL_FILE, CONFIG_FILE, LABELS_FILE, CARD_JSON, CARD_MD, DRIFT_REFERENCE)
DIGEST_TAG = "sha256."  # + variant


def digest(path: Path) -> str:
    """SHA-256 of a file, streamed."""
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def redact(uri: str) -> str:
    """A URI without the password it may carry (postgresql://user:secret@host/db)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class Version:
    """One registered version of a family."""

    family: str
    number: int
    run_id: str
    digests: dict[str, str]  # variant -> SHA-256 of its model.onnx
    aliases: tuple[str, ...]
    created_ms: int
    description: str

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(sorted(self.digests))

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.number,
            "variants": list(self.variants),
            "aliases": list(self.aliases),
            "run_id": self.run_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created_ms / 1000)),
            "description": self.description,
        }


def _error_code(exc: BaseException | None) -> str:
    return str(getattr(exc, "error_code", ""))


class Registry:
    """A family's versions and aliases in the MLflow registry the settings name."""

    def __init__(self, settings: RegistrySettings | None = None) -> None:
        self.settings = settings or RegistrySettings()
        self._client: Any = None

    @property
    def where(self) -> str:
        return redact(self.settings.uri)

    @property
    def client(self) -> Any:
        if self._client is None:
            # A registry server that does not answer fails a call in bounded time.
            os.environ.setdefault(
                "MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(self.settings.registry_timeout_s)))
            )
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            if self.settings.embedded:
                self.settings.store.mkdir(parents=True, exist_ok=True)
            with self._calls("open"):
                from mlflow.tracking import MlflowClient

                self._client = MlflowClient(
                    tracking_uri=self.settings.uri, registry_uri=self.settings.uri
                )
        return self._client

    @contextlib.contextmanager
    def _calls(self, what: str) -> Iterator[None]:
        """MLflow's and its transports' exceptions become one RegistryError naming the store."""
        try:
            yield
        except (NotFound, RegistryError):
            raise
        except Exception as exc:
            message = str(getattr(exc, "message", exc)).splitlines()[0][:300]
            raise RegistryError(f"model registry {self.where}: {what}: {message}") from exc

    # reading

    def known(self, family: str) -> bool:
        """True when the registry has a registered model of this name."""
        if not self.settings.exists():
            return False
        try:
            with self._calls(f"read {family!r}"):
                self.client.get_registered_model(family)
        except RegistryError as exc:
            if _error_code(exc.__cause__) == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        return True

    def aliases(self, family: str) -> dict[str, int]:
        with self._calls(f"read {family!r}"):
            model = self.client.get_registered_model(family)
        return {alias: int(number) for alias, number in (model.aliases or {}).items()}

    def alias(self, family: str, alias: str) -> int | None:
        return self.aliases(family).get(alias) if self.known(family) else None

    def versions(self, family: str) -> list[Version]:
        """Every version of the family, oldest first; NotFound when it has none."""
        if not self.known(family):
            raise NotFound(f"the model registry {self.where} has no model {family!r}")
        aliases = self.aliases(family)
        with self._calls(f"list the versions of {family!r}"):
            found = self.client.search_model_versions(f"name = '{family}'")
        return sorted(
            (self._version(mv, aliases) for mv in found), key=lambda version: version.number
        )

    def version(self, family: str, number: int) -> Version:
        for version in self.versions(family):
            if version.number == number:
                return version
        raise NotFound(f"model {family!r} has no version {number} in the registry {self.where}")

    def _version(self, mv: Any, aliases: dict[str, int]) -> Version:
        number = int(mv.version)
        return Version(
            family=mv.name,
            number=number,
            run_id=mv.run_id or "",
            digests={
                key.removeprefix(DIGEST_TAG): value
                for key, value in (mv.tags or {}).items()
                if key.startswith(DIGEST_TAG)
            },
            aliases=tuple(sorted(a for a, n in aliases.items() if n == number)),
            created_ms=int(mv.creation_timestamp or 0),
            description=mv.description or "",
        )

    def download(self, family: str, number: int, destination: Path) -> Path:
        """The version's files under `destination/<variant>/`, each model file checked against
        the digest the version recorded."""
        version = self.version(family, number)
        with self._calls(f"download {family} version {number}"):
            local = Path(
                self.client.download_artifacts(version.run_id, ARTIFACT_PATH, str(destination))
            )
        for variant, expected in version.digests.items():
            path = local / variant / MODEL_FILE
            if not path.is_file() or digest(path) != expected:
                raise RegistryError(
                    f"{family} version {number}: the registry's {variant} file is missing or "
                    f"differs from the digest recorded when it was registered"
                )
        return local

    # writing

    def record(self, family: str, source: Path, description: str = "") -> Version:
        """Register the family's variants found in repository `source` as a new version."""
        entries: dict[str, ModelEntry] = {}
        for path in sorted(source.iterdir()):
            if path.is_dir() and not path.name.startswith(".") and path.name.startswith(family):
                entry = read_model(path)
                if entry.family == family:
                    entries[entry.variant] = entry
        if not entries:
            raise NotFound(f"{source} holds no variant of {family!r} to register")
        first = next(iter(entries.values()))
        card = first.card() or {}
        digests = {variant: digest(entry.onnx_path) for variant, entry in entries.items()}
        with self._calls(f"record {family}"):
            from mlflow.entities import Metric, Param, RunTag

            experiment = self._experiment(family)
            run = self.client.create_run(experiment, run_name=f"build {family}")
            run_id = run.info.run_id
            now = int(time.time() * 1000)
            self.client.log_batch(
                run_id,
                metrics=[Metric(k, v, now, 0) for k, v in _metrics(card).items()],
                params=[Param(k, v) for k, v in _params(first, card, entries).items()],
                tags=[RunTag(k, v) for k, v in _tags(card).items()],
            )
            with tempfile.TemporaryDirectory(prefix=f"register-{family}-") as scratch:
                for variant, entry in entries.items():
                    folder = Path(scratch) / variant
                    folder.mkdir()
                    for name in VARIANT_FILES:
                        file = entry.onnx_path if name == MODEL_FILE else entry.directory / name
                        if file.is_file():
                            _link_or_copy(file, folder / name)
                self.client.log_artifacts(run_id, scratch, ARTIFACT_PATH)
            self.client.set_terminated(run_id)
            if not self.known(family):
                self.client.create_registered_model(
                    family,
                    tags={"task": first.task},
                    description=str(card.get("summary") or ""),
                )
            mv = self.client.create_model_version(
                name=family,
                source=f"{run.info.artifact_uri}/{ARTIFACT_PATH}",
                run_id=run_id,
                tags={f"{DIGEST_TAG}{variant}": value for variant, value in digests.items()},
                description=description,
            )
        version = self._version(mv, {})
        log.info("registered %s version %d in %s", family, version.number, self.where)
        return version

    def set_alias(self, family: str, alias: str, number: int) -> None:
        with self._calls(f"set {alias} of {family} to version {number}"):
            self.client.set_registered_model_alias(family, alias, str(number))

    def tag(self, family: str, number: int, key: str, value: str) -> None:
        with self._calls(f"tag {family} version {number}"):
            self.client.set_model_version_tag(family, str(number), key, value)

    def clear_alias(self, family: str, alias: str) -> None:
        if alias in self.aliases(family):
            with self._calls(f"clear {alias} of {family}"):
                self.client.delete_registered_model_alias(family, alias)

    def _experiment(self, family: str) -> str:
        name = EXPERIMENT_PREFIX + family
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        location = self.settings.artifact_location
        return str(
            self.client.create_experiment(
                name, artifact_location=f"{location}/{family}" if location else None
            )
        )


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _params(first: Any, card: dict[str, Any], entries: dict[str, Any]) -> dict[str, str]:
    built = card.get("built") or {}
    params = {
        "family": first.family,
        "task": first.task,
        "kind": str(card.get("kind", "")),
        "variants": ",".join(sorted(entries)),
        "input": str(card.get("input", "")),
        "preprocess": first.preprocess.model_dump_json(),
        "how_built": str(built.get("how", "")),
        "reproduce": str(built.get("reproduce", "")),
        "calibration": str(built.get("calibration", "")),
        "quantization_method": str(built.get("quantization_method", "")),
        "max_batch_size": str(first.batching.max_batch_size),
    }
    for variant, entry in entries.items():
        params[f"backend.{variant}"] = entry.preferred_backend
    return {key: value[:6000] for key, value in params.items()}  # MLflow's parameter bound


def _metrics(card: dict[str, Any]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    evaluation = card.get("evaluation") or {}
    for variant in ("fp32", "bf16", "int8"):
        for measure in ("top1", "map50"):  # a classifier's, a detector's
            if evaluation.get(f"{variant}_{measure}") is not None:
                metrics[f"{measure}.{variant}"] = float(evaluation[f"{variant}_{measure}"])
        if evaluation.get(f"{variant}_fp32_agreement") is not None:
            metrics[f"agreement_with_fp32.{variant}"] = float(
                evaluation[f"{variant}_fp32_agreement"]
            )
        size = (card.get("files") or {}).get(f"{variant}_bytes")
        if size is not None:
            metrics[f"bytes.{variant}"] = float(size)
    for variant, share in (evaluation.get("backend_agreement") or {}).items():
        metrics[f"backend_agreement.{variant}"] = float(share)
    if evaluation.get("samples") is not None:
        metrics["evaluation_samples"] = float(evaluation["samples"])
    for row in card.get("performance") or []:
        key = f"{row['variant']}.{row['backend']}.batch{row['batch_size']}"
        metrics[f"images_per_s.{key}"] = float(row["images_per_s"])
        metrics[f"p99_ms.{key}"] = float(row["p99_ms"])
    return metrics


def _tags(card: dict[str, Any]) -> dict[str, str]:
    cpu = card.get("cpu") or {}
    tags = {
        "cpu": str(cpu.get("model", "")),
        "cpu_isa": ",".join(cpu.get("isa") or ()),
        "machine": str(card.get("machine", "")),
        "gate": json.dumps(card.get("gate") or {})[:5000],
    }
    return {key: value for key, value in tags.items() if value}
