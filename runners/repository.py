"""The model repository: Triton layout, read and written in one place.

    model_repository/<name>/config.pbtxt        Triton ModelConfig (text protobuf)
    model_repository/<name>/<version>/model.onnx
    model_repository/<name>/labels.txt          one label per line (output label_filename)
    model_repository/<name>/model_card.{json,md}
    model_repository/<name>/registry.json       which registry version this is (lifecycle)

`config.pbtxt` is the single source of truth: Triton reads its batching and instance
settings, and the project's own settings live in its `parameters` under `project.*` keys
(Triton's ONNX Runtime backend ignores keys it does not know). FP32, BF16 and INT8 are
separate model names (`digits_fp32`, `digits_bf16`, `digits_int8`) sharing a family, so
Triton can serve each; `project.precision` states the precision a variant runs in. The
version served is the one Triton's `version_policy` names (`specific`, as `lifecycle.promote`
writes it); a config without one serves its highest version folder, as Triton's default does.

A bf16 variant is its own directory holding the FP32 file (a hard link where the filesystem
allows), not a runtime setting of the FP32 model: like INT8 it is an artifact with its own
gate verdict and card, published only where it passed the gate and paid on the CPU it was
built on, and every front end and tool sees it as one more model name. Its config names
Triton's OpenVINO backend with the BF16 hint, so the official container runs it as stated.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from google.protobuf import text_format
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tritonclient.grpc import model_config_pb2 as mc

from runners.errors import NotFound, RepositoryError
from runners.precision import Precision
from runners.preprocessing import PreprocessSpec

# A variant is named after the precision it runs in (runners.precision).
Variant = Precision
VARIANTS: tuple[Variant, ...] = ("fp32", "bf16", "int8")
CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
MODEL_FILE = "model.onnx"
CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"
# The drift reference of the version a directory serves (monitoring.drift).
DRIFT_REFERENCE = "drift_reference.json"
REGISTRY_STAMP = "registry.json"
# The prefix of a task's own config parameters (`ModelEntry.task_parameters`).
TASK_PARAMETER = "project.task."

# The official Triton container's backend for each precision, and what it is told: ONNX Runtime
# runs FP32 and QDQ INT8 as stated; BF16 needs OpenVINO and its hint.
TRITON_BACKEND: dict[Precision, str] = {
    "fp32": "onnxruntime",
    "bf16": "openvino",
    "int8": "onnxruntime",
}
TRITON_BACKEND_PARAMETERS: dict[Precision, dict[str, str]] = {
    "fp32": {},
    "bf16": {"INFERENCE_PRECISION_HINT": "bf16"},
    "int8": {},
}

_NUMPY_DTYPES = {"FP32": "float32", "FP16": "float16", "UINT8": "uint8"}
_DTYPES = {"FP32": mc.TYPE_FP32, "FP16": mc.TYPE_FP16, "UINT8": mc.TYPE_UINT8}


class TensorSpec(BaseModel):
    """A model input or output as Triton declares it: dims exclude the batch axis."""

    model_config = ConfigDict(frozen=True)

    name: str
    dtype: Literal["FP32", "FP16", "UINT8"] = "FP32"
    dims: tuple[int, ...]

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(_NUMPY_DTYPES[self.dtype])


class Batching(BaseModel):
    """Dynamic batching settings, shared by Triton and the BentoML batcher."""

    model_config = ConfigDict(frozen=True)

    max_batch_size: int = Field(ge=0, description="0 serves the model unbatched.")
    preferred_batch_sizes: tuple[int, ...] = Field(default=())
    max_queue_delay_us: int = Field(default=2000, ge=0, description="Wait to fill a batch.")
    max_queue_size: int = Field(default=256, ge=0, description="Bounded queue; 0 = unbounded.")

    @property
    def max_latency_ms(self) -> float:
        return self.max_queue_delay_us / 1000

    def off(self) -> Batching:
        """These settings with batching turned off: one request per run, no queue delay.
        The batch axis stays (max_batch_size 1), so the model's signature does not change;
        the queue bound stays, so shedding is the same."""
        return self.model_copy(
            update={"max_batch_size": 1, "preferred_batch_sizes": (), "max_queue_delay_us": 0}
        )


class Rollout(BaseModel):
    """A challenger version loaded beside the champion, and the shares of traffic it sees.

    A request draws a number in [0, 1): below `canary_share` the challenger answers it; below
    `canary_share + shadow_share` the champion answers and the challenger also runs it, its
    answer compared and dropped (a shadow); above, the champion alone."""

    model_config = ConfigDict(frozen=True)

    challenger: int = Field(ge=1)
    canary_share: float = Field(default=0.0, ge=0.0, le=1.0)
    shadow_share: float = Field(default=0.0, ge=0.0, le=1.0)
    decide: bool = Field(
        default=True, description="The rollout controller promotes or rolls back on its own."
    )

    def route(self, draw: float) -> tuple[bool, bool]:
        """(answered by the challenger, shadowed by it) for a request's draw."""
        if draw < self.canary_share:
            return True, False
        return False, draw < self.canary_share + self.shadow_share


class ModelEntry(BaseModel):
    """One served model (one variant of one family), as read from the repository."""

    model_config = ConfigDict(frozen=True)

    name: str
    family: str
    variant: Variant
    version: int = Field(ge=1)
    directory: Path
    task: str = Field(default="classification", description="The kind of model (runners.tasks).")
    task_parameters: dict[str, str] = Field(
        default_factory=dict,
        description="The task's own settings by name (config parameters `project.task.NAME`), "
        "e.g. a detector's score and IoU thresholds; the task reads and checks them.",
    )
    inputs: tuple[TensorSpec, ...] = Field(min_length=1)
    outputs: tuple[TensorSpec, ...] = Field(min_length=1)
    labels: tuple[str, ...]
    preprocess: PreprocessSpec
    batching: Batching
    instances: int = Field(default=1, ge=1, description="Replicas inside one server.")
    preferred_backend: Literal["onnxruntime", "openvino"] = "onnxruntime"
    output_kind: Literal["logits", "probabilities"] = "logits"
    load_profile: bool = Field(default=False, description="Random weights: not a classifier.")
    rollout: Rollout | None = Field(
        default=None, description="A challenger beside `version` (the champion), if any."
    )

    @property
    def versions(self) -> tuple[int, ...]:
        """The versions a server loads: the champion, then the challenger."""
        return (self.version,) if self.rollout is None else (self.version, self.rollout.challenger)

    def at_version(self, version: int) -> ModelEntry:
        """This entry as version `version` serves (its file), without a rollout."""
        return self.model_copy(update={"version": version, "rollout": None})

    @property
    def precision(self) -> Precision:
        """The numeric precision the engines run this variant in (runners.precision)."""
        return self.variant

    @property
    def onnx_path(self) -> Path:
        return self.directory / str(self.version) / MODEL_FILE

    @property
    def card_path(self) -> Path:
        return self.directory / CARD_JSON

    def card(self) -> dict[str, Any] | None:
        """The model card's figures, when the model has one."""
        if not self.card_path.is_file():
            return None
        loaded: dict[str, Any] = json.loads(self.card_path.read_text())
        return loaded

    def registration(self) -> dict[str, Any] | None:
        """The registry version this directory was written from (lifecycle.promote), if any."""
        path = self.directory / REGISTRY_STAMP
        if not path.is_file():
            return None
        try:
            loaded: dict[str, Any] = json.loads(path.read_text())
        except ValueError as exc:
            raise RepositoryError(f"{path} is not valid JSON: {exc}") from exc
        return loaded


def parse_config(text: str, source: str = CONFIG_FILE) -> Any:
    """Parse config.pbtxt text as Triton's ModelConfig; a clear error names the file."""
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise RepositoryError(f"{source} is not a valid Triton ModelConfig: {exc}") from exc
    return config


def _param(config: Any, key: str, default: str | None = None, source: str = "") -> str:
    if key in config.parameters:
        return str(config.parameters[key].string_value)
    if default is None:
        raise RepositoryError(f"{source} lacks parameter {key!r}")
    return default


def _dtype_name(value: int, source: str) -> str:
    for name, code in _DTYPES.items():
        if code == value:
            return name
    raise RepositoryError(f"{source}: unsupported data_type {mc.DataType.Name(value)}")


def _tensor(tensor: Any, max_batch_size: int, source: str) -> TensorSpec:
    """A config tensor with the batch axis removed: Triton lists it only when unbatched."""
    dims = tuple(tensor.dims)
    if max_batch_size == 0:
        if not dims or dims[0] != 1:
            raise RepositoryError(
                f"{source}: unbatched tensor {tensor.name!r} must start with a batch dim of 1"
            )
        dims = dims[1:]
    return TensorSpec(
        name=tensor.name,
        dtype=_dtype_name(tensor.data_type, source),  # type: ignore[arg-type]
        dims=dims,
    )


def _served_versions(config: Any, folders: list[int], directory: Path, source: str) -> list[int]:
    """The versions Triton would serve: the folders the config's version policy allows (the
    highest one without a `specific` policy)."""
    if not folders:
        raise RepositoryError(f"{directory} has no numbered version folder with {MODEL_FILE}")
    if config.version_policy.WhichOneof("policy_choice") != "specific":
        return folders[-1:]
    wanted = sorted(config.version_policy.specific.versions)
    present = [version for version in folders if version in wanted]
    if len(present) != len(wanted):
        raise RepositoryError(
            f"{source}: version_policy serves version {', '.join(map(str, wanted))}, the "
            f"folder holds version {', '.join(map(str, folders))}"
        )
    return present


def _rollout(config: Any, served: list[int], source: str) -> tuple[int, Rollout | None]:
    """The champion among the served versions (`project.champion`, else the highest) and the
    challenger's rollout (`project.challenger` and its shares), checked against each other."""
    champion = int(_param(config, "project.champion", str(served[-1]), source))
    if champion not in served:
        raise RepositoryError(f"{source}: champion {champion} is not a served version {served}")
    if "project.challenger" not in config.parameters:
        if len(served) > 1:
            raise RepositoryError(f"{source}: serves {served} but names no challenger")
        return champion, None
    try:
        rollout = Rollout(
            challenger=int(_param(config, "project.challenger", source=source)),
            canary_share=float(_param(config, "project.canary_share", "0", source)),
            shadow_share=float(_param(config, "project.shadow_share", "0", source)),
            decide=_param(config, "project.rollout_decide", "true", source) == "true",
        )
    except (ValueError, ValidationError) as exc:
        raise RepositoryError(f"{source}: invalid rollout: {exc}") from exc
    if sorted({champion, rollout.challenger}) != sorted(served) or champion == rollout.challenger:
        raise RepositoryError(
            f"{source}: champion {champion} and challenger {rollout.challenger} must be the "
            f"served versions {served}"
        )
    if rollout.canary_share + rollout.shadow_share > 1:
        raise RepositoryError(f"{source}: canary and shadow shares add up to more than 1")
    return champion, rollout


# How often a reader starts over when the directory it reads is swapped under it.
_READ_ATTEMPTS = 5


def _identity(directory: Path) -> tuple[int, int] | None:
    """Which directory the path names now (device, inode); None when nothing is there."""
    try:
        found = os.stat(directory)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def read_model(directory: Path, name: str | None = None, version: int | None = None) -> ModelEntry:
    """Read one model directory; every inconsistency is a RepositoryError naming the file.

    `name` is the model name when the folder is not yet named after it (a staging folder);
    `version` reads that version folder whatever the config's policy says (one being written).

    A writer replaces a directory whole (`write_model` swaps it into place), but a read takes
    several steps: the config, the version folders, the labels. A read that spans a swap could
    pair one directory's config with the other's folders, so the read checks that the path
    still names the directory it started on, and starts over when it does not.
    """
    for _ in range(_READ_ATTEMPTS):
        before = _identity(directory)
        try:
            entry = _read_model_once(directory, name, version)
        except (RepositoryError, OSError):
            if _identity(directory) == before:
                raise
            continue
        if _identity(directory) == before:
            return entry
    raise RepositoryError(f"{directory} was replaced {_READ_ATTEMPTS} times while it was read")


def _read_model_once(directory: Path, name: str | None, version: int | None) -> ModelEntry:
    """The directory's files, read; the entry they make is built once per distinct content
    (`_entry`): a poller that reads the repository every second parses nothing new."""
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise RepositoryError(f"{config_path} is missing")
    text = config_path.read_text()
    folders = tuple(
        sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())
    )
    labels_path = directory / LABELS_FILE
    labels = labels_path.read_text() if labels_path.is_file() else None
    return _entry(directory, name or directory.name, version, text, folders, labels)


@functools.lru_cache(maxsize=256)
def _entry(  # noqa: PLR0917 (the cache key: every file read, in order)
    directory: Path,
    name: str,
    version: int | None,
    text: str,
    folders: tuple[int, ...],
    labels_text: str | None,
) -> ModelEntry:
    """The entry a model directory's contents make: its config's text, its version folders and
    its labels' text (None: no labels file). Entries are frozen, so readers share one."""
    source = str(directory / CONFIG_FILE)
    config = parse_config(text, source)
    if config.name and config.name != name:
        raise RepositoryError(f"{source} names model {config.name!r}, its folder is {name!r}")
    rollout: Rollout | None = None
    if version is None:
        version, rollout = _rollout(
            config, _served_versions(config, list(folders), directory, source), source
        )
    elif version not in folders:
        raise RepositoryError(f"{directory} has no version folder {version}")
    if labels_text is None:
        raise RepositoryError(f"{directory / LABELS_FILE} is missing")
    labels = tuple(line.strip() for line in labels_text.splitlines() if line.strip())
    queue = config.dynamic_batching.default_queue_policy
    try:
        entry = ModelEntry(
            name=name,
            family=_param(config, "project.family", source=source),
            variant=_param(config, "project.variant", source=source),  # type: ignore[arg-type]
            version=version,
            directory=directory,
            task=_param(config, "project.task", "classification", source),
            task_parameters={
                key.removeprefix(TASK_PARAMETER): str(value.string_value)
                for key, value in config.parameters.items()
                if key.startswith(TASK_PARAMETER)
            },
            inputs=tuple(_tensor(t, config.max_batch_size, source) for t in config.input),
            outputs=tuple(_tensor(t, config.max_batch_size, source) for t in config.output),
            labels=labels,
            preprocess=PreprocessSpec.model_validate_json(
                _param(config, "project.preprocess", source=source)
            ),
            batching=Batching(
                max_batch_size=config.max_batch_size,
                preferred_batch_sizes=tuple(config.dynamic_batching.preferred_batch_size),
                max_queue_delay_us=config.dynamic_batching.max_queue_delay_microseconds,
                max_queue_size=queue.max_queue_size,
            ),
            instances=max(1, sum(group.count for group in config.instance_group) or 1),
            preferred_backend=_param(  # type: ignore[arg-type]
                config, "project.preferred_backend", "onnxruntime", source
            ),
            output_kind=_param(config, "project.output_kind", "logits", source),  # type: ignore[arg-type]
            load_profile=_param(config, "project.load_profile", "false", source) == "true",
            rollout=rollout,
        )
    except ValidationError as exc:
        raise RepositoryError(f"{source}: {exc}") from exc
    stated = _param(config, "project.precision", entry.variant, source)
    if stated != entry.precision:
        raise RepositoryError(
            f"{source}: variant {entry.variant!r} states precision {stated!r}; a variant runs "
            f"in the precision it is named after"
        )
    _check_consistent(entry, source)
    return entry


def _check_consistent(entry: ModelEntry, source: str) -> None:
    """The entry's task judges whether its tensors, labels and preprocessing fit."""
    from runners.tasks import get_task

    get_task(entry.task).check(entry, source)


def render_config(entry: ModelEntry) -> str:
    """The config.pbtxt text for an entry, loadable by Triton's onnxruntime backend."""
    config = mc.ModelConfig(
        name=entry.name,
        backend=TRITON_BACKEND[entry.precision],
        max_batch_size=entry.batching.max_batch_size,
    )
    if entry.precision == "bf16":
        # Triton's OpenVINO backend reads model.onnx too, given its name.
        config.default_model_filename = MODEL_FILE
    # Unbatched models (max_batch_size 0) list their fixed batch axis of 1, as Triton expects.
    lead = [1] if entry.batching.max_batch_size == 0 else []
    for tensor in entry.inputs:
        config.input.add(
            name=tensor.name, data_type=_DTYPES[tensor.dtype], dims=[*lead, *tensor.dims]
        )
    for tensor in entry.outputs:
        config.output.add(
            name=tensor.name,
            data_type=_DTYPES[tensor.dtype],
            dims=[*lead, *tensor.dims],
            # Triton's classification extension reads labels for a one-output classifier.
            label_filename=LABELS_FILE if entry.task == "classification" else "",
        )
    if entry.batching.max_batch_size > 0:
        batching = config.dynamic_batching
        batching.preferred_batch_size.extend(entry.batching.preferred_batch_sizes)
        batching.max_queue_delay_microseconds = entry.batching.max_queue_delay_us
        batching.default_queue_policy.max_queue_size = entry.batching.max_queue_size
    config.instance_group.add(count=entry.instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    config.version_policy.specific.versions.extend(sorted(entry.versions))
    params = {
        "project.task": entry.task,
        "project.family": entry.family,
        "project.variant": entry.variant,
        "project.precision": entry.precision,
        "project.preferred_backend": entry.preferred_backend,
        "project.output_kind": entry.output_kind,
        "project.load_profile": "true" if entry.load_profile else "false",
        "project.preprocess": entry.preprocess.model_dump_json(),
    }
    params.update({TASK_PARAMETER + key: value for key, value in entry.task_parameters.items()})
    params["project.champion"] = str(entry.version)
    if entry.rollout is not None:
        params["project.challenger"] = str(entry.rollout.challenger)
        params["project.canary_share"] = repr(entry.rollout.canary_share)
        params["project.shadow_share"] = repr(entry.rollout.shadow_share)
        params["project.rollout_decide"] = "true" if entry.rollout.decide else "false"
    params.update(TRITON_BACKEND_PARAMETERS[entry.precision])
    for key, value in params.items():
        config.parameters[key].string_value = value
    return str(text_format.MessageToString(config))


def _place(source: Path, target: Path) -> None:
    """A hard link where the filesystem allows (a bf16 variant shares the FP32 file; files in
    the repository are replaced whole, never written in place), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    target.chmod(0o644)  # servers in containers run as other users


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system
    or filesystem cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    done = renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    return done == 0


def _replace(staging: Path, target: Path) -> None:
    """Put the staged directory where `target` is. Swapped in one step where the system can,
    so that a server reading the repository while it changes (a rollout) always finds the
    whole model; elsewhere in two renames, with a moment in which it is missing."""
    if _exchange(staging, target):
        shutil.rmtree(staging)  # the old directory, now at the staging path
        return
    retired = target.parent / f".{target.name}.retired"
    shutil.rmtree(retired, ignore_errors=True)
    target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired)


def write_model(
    entry: ModelEntry,
    onnx_file: Path,
    extra_files: dict[str, str] | None = None,
    challenger_file: Path | None = None,
) -> ModelEntry:
    """Write a complete model directory atomically: built and re-read aside, then renamed
    into place, so a server scanning the repository never sees half a model. An entry with a
    rollout also needs its challenger's file."""
    target = entry.directory
    target.parent.mkdir(parents=True, exist_ok=True)
    files = {entry.version: onnx_file}
    if entry.rollout is not None:
        if challenger_file is None:
            raise RepositoryError(f"{entry.name}: a rollout needs the challenger's model file")
        files[entry.rollout.challenger] = challenger_file
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; servers in containers run as other users
    try:
        for version, file in files.items():
            (staging / str(version)).mkdir()
            _place(file, staging / str(version) / MODEL_FILE)
        (staging / LABELS_FILE).write_text("\n".join(entry.labels) + "\n")
        (staging / CONFIG_FILE).write_text(render_config(entry))
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        read_model(staging, name=entry.name)
        if target.exists():
            _replace(staging, target)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return read_model(target)


class Repository:
    """Every model under a repository root, keyed by name, grouped by family."""

    def __init__(self, root: Path, batching: bool = True) -> None:
        """`batching` False reads every entry with its batching turned off (`Batching.off`),
        whatever its config.pbtxt says: how the front ends serve a model unbatched from the
        same repository (the IMGSERVE_BATCHING setting)."""
        self.root = root
        if not root.is_dir():
            raise RepositoryError(f"model repository {root} does not exist")
        self.entries: dict[str, ModelEntry] = {
            path.name: read_model(path)
            for path in sorted(root.iterdir())
            if path.is_dir() and not path.name.startswith(".")
        }
        if not batching:
            self.entries = {
                name: entry.model_copy(update={"batching": entry.batching.off()})
                for name, entry in self.entries.items()
            }

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self.entries.values())

    def families(self) -> dict[str, dict[str, ModelEntry]]:
        grouped: dict[str, dict[str, ModelEntry]] = {}
        for entry in self.entries.values():
            grouped.setdefault(entry.family, {})[entry.variant] = entry
        return grouped

    def get(self, family: str, variant: str) -> ModelEntry:
        """The entry for a family and variant; NotFound names what exists."""
        families = self.families()
        if family not in families:
            raise NotFound(f"unknown model {family!r}; models: {', '.join(sorted(families))}")
        if variant not in families[family]:
            raise NotFound(
                f"model {family!r} has no variant {variant!r}; variants: "
                f"{', '.join(sorted(families[family]))}"
            )
        return families[family][variant]
