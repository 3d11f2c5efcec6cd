"""Import: every check, then `offline.publish` writes both variants."""

from __future__ import annotations

import hashlib
import logging
import re
import shlex
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from offline.card import ModelCard
from offline.gate import GateThresholds
from offline.importing.batch_axis import ROW_ATOL, ROW_RTOL, BatchPlan, plan_batching, run_rows
from offline.importing.images import folder, load_images, read_labels
from offline.importing.parity import DEFAULT_MIN_PARITY, check_parity
from offline.importing.signature import (
    Signature,
    final_op,
    inspect_model,
    show,
    with_fixed_dims,
)
from offline.importing.spec import SPEC_FLAGS, resolve_spec
from offline.publish import PublishRequest, publish
from offline.quantize import QUANTIZERS, failure_reason, opset_of, upgrade_opset
from runners.errors import ModelImportError
from runners.preprocessing import PreprocessSpec
from runners.repository import VARIANTS, Batching
from runners.settings import REPO_ROOT

log = logging.getLogger(__name__)

DEFAULT_REPOSITORY = REPO_ROOT / "model_repository"
NAME_PATTERN = re.compile(r"[a-z0-9_]+")
PROBE_ROWS = 3
DEFAULT_BATCHING = Batching(max_batch_size=32, max_queue_delay_us=2000, max_queue_size=256)


def check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise ModelImportError(f"model name {name!r} must be lowercase letters, digits and _")
    if name.endswith(tuple(f"_{variant}" for variant in VARIANTS)):
        raise ModelImportError(
            f"model name {name!r} must not end in _fp32 or _int8: the variants get those"
        )


def _check_outputs(
    reference: np.ndarray, labels: tuple[str, ...], labels_file: Path, model_path: Path, kind: str
) -> None:
    if reference.shape[1] != len(labels):
        raise ModelImportError(
            f"labels file {labels_file} has {len(labels)} labels but {model_path} returns "
            f"{reference.shape[1]} classes"
        )
    if not np.isfinite(reference).all():
        raise ModelImportError(f"{model_path} returns non-finite scores on calibration images")
    if kind == "probabilities" and not (
        (reference >= -1e-6).all() and np.allclose(reference.sum(axis=1), 1.0, atol=1e-3)
    ):
        raise ModelImportError(
            f"--output-kind probabilities, but the rows {model_path} returns do not sum to 1 "
            "(use logits, or end the graph with Softmax)"
        )


OutputKind = Literal["logits", "probabilities"]


def detect_output_kind(
    model: onnx.ModelProto, signature: Signature, requested: OutputKind | None, path: Path
) -> tuple[OutputKind, str]:
    """The output kind the graph shows (a final Softmax: probabilities), and where it comes from.

    A flag that contradicts the graph is refused: softmax applied to probabilities again
    would flatten every score toward 1/classes without a word.
    """
    last = final_op(model, signature.output_name)
    if last == "Softmax":
        if requested == "logits":
            raise ModelImportError(
                f"{path}: --output-kind logits, but output {signature.output_name!r} comes from "
                "a Softmax (probabilities): drop the flag, or pass --output-kind probabilities"
            )
        return "probabilities", "probabilities (the graph ends in Softmax)"
    if requested is None:
        return "logits", f"logits (the graph ends in {last or 'no operator'}, not Softmax)"
    return requested, f"{requested} (--output-kind)"


def _check_converted(model: Path, probe: np.ndarray, converted: np.ndarray) -> None:
    """The opset-converted graph must return the original's rows."""
    original = run_rows(model, probe, together=False)
    if original.shape != converted.shape or not np.allclose(
        original, converted, atol=ROW_ATOL, rtol=ROW_RTOL
    ):
        raise ModelImportError(
            f"{model}: after onnx.version_converter the graph returns different rows on "
            "calibration images; import it without --opset"
        )


def _batching(requested: Batching, plan: BatchPlan) -> Batching:
    if plan.unbatched:
        return Batching(
            max_batch_size=0,
            max_queue_delay_us=requested.max_queue_delay_us,
            max_queue_size=requested.max_queue_size,
        )
    too_big = [s for s in requested.preferred_batch_sizes if not 1 <= s <= requested.max_batch_size]
    if too_big:
        raise ModelImportError(
            f"preferred batch sizes {too_big} are outside 1..{requested.max_batch_size} "
            "(--max-batch-size)"
        )
    return requested


def _provenance(path: Path, model: onnx.ModelProto) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return (
        f"Imported by offline/importing from {path.name} (sha256 {digest[:16]}, produced by "
        f"{producer or 'an unnamed tool'}, opset {opset})."
    )


def _reproduce(
    request: PublishRequest,
    *,
    model: Path,
    labels: Path,
    calibration: Path,
    validation: Path | None,
    requested: Batching,
    opset: int | None = None,
    reference_files: tuple[Path, Path] | None = None,
    min_parity: float = DEFAULT_MIN_PARITY,
) -> str:
    """The command line that imports the same file into the same variants again; it asks
    for the batching the user asked for, since whether the graph allows it is re-derived."""
    words = ["python", "-m", "offline", "import", str(model), "--name", request.family]
    words += ["--repository", str(request.repository)]
    words += ["--labels", str(labels), "--calibration", str(calibration)]
    if validation is not None:
        words += ["--validation", str(validation)]
    for field, flag in SPEC_FLAGS.items():
        value = getattr(request.spec, field)
        if value is None:
            continue
        if isinstance(value, bool):
            words.append(f"--{flag}" if value else f"--no-{flag}")
        elif isinstance(value, tuple):
            words += [f"--{flag}", ",".join(f"{v:.9g}" for v in value)]
        else:
            words += [f"--{flag}", f"{value:.9g}" if isinstance(value, float) else str(value)]
    batching = requested
    words += ["--max-batch-size", str(batching.max_batch_size)]
    if batching.max_batch_size:
        if batching.preferred_batch_sizes:
            sizes = ",".join(map(str, batching.preferred_batch_sizes))
            words += ["--preferred-batch-sizes", sizes]
        words += ["--max-queue-delay-us", str(batching.max_queue_delay_us)]
    words += ["--max-queue-size", str(batching.max_queue_size)]
    words += ["--output-kind", request.output_kind]
    if request.preferred_backend is not None:
        words += ["--backend", request.preferred_backend]
    words += ["--quantizers", ",".join(request.quantizers)]
    words += ["--max-drop-points", f"{request.thresholds.max_drop_points:g}"]
    words += ["--min-agreement", f"{request.thresholds.min_agreement:g}"]
    if opset is not None:
        words += ["--opset", str(opset)]
    if reference_files is not None:
        words += ["--reference", *map(str, reference_files), "--min-parity", f"{min_parity:g}"]
    return ".venv/bin/" + shlex.join(words)


def import_model(
    model: Path,
    name: str,
    *,
    labels: Path,
    calibration: Path,
    spec: Mapping[str, Any] | PreprocessSpec | None = None,
    spec_source: str = "the given spec",
    validation: Path | None = None,
    repository: Path = DEFAULT_REPOSITORY,
    batching: Batching = DEFAULT_BATCHING,
    preferred_backend: Literal["onnxruntime", "openvino"] | None = None,
    output_kind: OutputKind | None = None,
    quantizers: Sequence[str] = tuple(QUANTIZERS),
    measure_batch_sizes: Sequence[int] = (1, 8, 32),
    measure_duration_s: float = 1.0,
    thresholds: GateThresholds | None = None,
    summary: str | None = None,
    replace: bool = False,
    reference_files: tuple[Path, Path] | None = None,
    min_parity: float = DEFAULT_MIN_PARITY,
    opset: int | None = None,
) -> ModelCard:
    """Check everything, then publish `<name>_fp32` and (through the gate) `<name>_int8`.

    `spec` holds PreprocessSpec fields; layout, height, width and colour mode left out are
    read from the input's static dims. Every refusal is a ModelImportError raised before
    anything is written; an INT8 refused by the gate is AccuracyGateFailed, FP32 written.
    `batching.max_batch_size == 0` asks for an unbatched model. `output_kind` None reads it
    from the graph (a final Softmax means probabilities). `reference_files` (a folder of images
    and a .npz of the original pipeline's outputs for them) is checked before publishing;
    `opset` converts the graph first (onnx.version_converter), checked on calibration rows.
    """
    check_name(name)
    unknown = [q for q in quantizers if q not in QUANTIZERS]
    if unknown or not quantizers:
        raise ModelImportError(f"unknown quantizers {unknown}; choose from {', '.join(QUANTIZERS)}")
    existing = [
        repository / f"{name}_{v}" for v in VARIANTS if (repository / f"{name}_{v}").exists()
    ]
    if existing and not replace:
        raise ModelImportError(
            f"{existing[0]} already exists; pass --replace to overwrite model {name!r}"
        )
    label_names = read_labels(labels)
    folder(calibration, "calibration")
    if validation is not None:
        folder(validation, "validation")
    onnx_model, signature = inspect_model(model)
    fields = spec.model_dump() if isinstance(spec, PreprocessSpec) else dict(spec or {})
    resolved = resolve_spec(fields, signature, model, spec_source)
    fixed_model, signature, rewrites = with_fixed_dims(
        onnx_model, signature, (None, *resolved.sample_shape)
    )
    kind, kind_note = detect_output_kind(onnx_model, signature, output_kind, model)
    if opset is not None and opset != opset_of(fixed_model):
        try:
            fixed_model = upgrade_opset(fixed_model, opset)
        except Exception as exc:  # the converter's refusal, in one line
            raise ModelImportError(
                f"{model}: onnx.version_converter cannot convert it from opset "
                f"{opset_of(onnx_model)} to {opset} ({failure_reason(exc)}); import it "
                "without --opset"
            ) from exc
        rewrites.append(
            f"the graph is converted from opset {opset_of(onnx_model)} to {opset} by "
            "onnx.version_converter (same outputs on the calibration probe)"
        )
    declared = signature.output_dims
    if declared is not None and declared[1] is not None and declared[1] != len(label_names):
        raise ModelImportError(
            f"labels file {labels} has {len(label_names)} labels but {model} declares "
            f"{declared[1]} classes (output {signature.output_name!r} is {show(declared)})"
        )
    calib, valid = load_images(calibration, validation, label_names, resolved)
    probe = np.resize(calib.samples, (PROBE_ROWS, *calib.samples.shape[1:]))
    with tempfile.TemporaryDirectory(prefix=f"import-{name}-") as scratch:
        source = model
        if rewrites:
            source = Path(scratch) / "source.onnx"
            onnx.save(fixed_model, str(source))
        plan, reference = plan_batching(
            fixed_model,
            signature,
            source,
            probe,
            Path(scratch),
            want_unbatched=batching.max_batch_size == 0,
            display=model,
        )
        if opset is not None and rewrites:
            _check_converted(model, probe, reference)
        _check_outputs(reference, label_names, labels, model, kind)
        parity = None
        if reference_pair := reference_files:
            found = check_parity(
                plan.onnx_file,
                reference_pair[0],
                reference_pair[1],
                resolved,
                label_names,
                min_agreement=min_parity,
                display=model,
            )
            parity = f"{found.describe()} (at least {min_parity:.2%} required)"
            log.info("%s: parity: %s", name, parity)
        served = _batching(batching, plan)
        sizes = tuple(s for s in measure_batch_sizes if s <= max(1, served.max_batch_size))
        request = PublishRequest(
            family=name,
            fp32_onnx=plan.onnx_file,
            spec=resolved,
            labels=label_names,
            input_name=signature.input_name,
            output_name=signature.output_name,
            calibration=calib.samples,
            validation=valid.samples,
            validation_labels=valid.labels,
            validation_description=valid.description,
            calibration_description=calib.description,
            repository=repository,
            batching=served,
            summary=summary
            or (
                f"Imported image classifier {name!r}: {len(label_names)} classes "
                f"({', '.join(label_names[:5])}{', ...' if len(label_names) > 5 else ''}), "
                f"input {resolved.layout} {resolved.color_mode} "
                f"{resolved.height}x{resolved.width}."
            ),
            how_built=" ".join(
                [
                    _provenance(model, onnx_model),
                    *(f"{note[0].upper()}{note[1:]}." for note in rewrites),
                    plan.note,
                    f"Output kind: {kind_note}.",
                ]
            ),
            reproduce="",  # set below, from the request itself
            output_kind=kind,
            parity=parity,
            source_name=str(model),
            preferred_backend=preferred_backend,
            quantizers=tuple(quantizers),
            measure_batch_sizes=sizes or (1,),
            measure_duration_s=measure_duration_s,
            thresholds=thresholds or GateThresholds(),
        )
        log.info(
            "%s: checks passed (%d calibration, %d validation images, %s); publishing",
            name,
            len(calib.samples),
            len(valid.samples),
            "unbatched" if plan.unbatched else f"max batch {served.max_batch_size}",
        )
        request.reproduce = _reproduce(
            request,
            model=model,
            labels=labels,
            calibration=calibration,
            validation=validation,
            requested=batching,
            opset=opset,
            reference_files=reference_files,
            min_parity=min_parity,
        )
        return publish(request)
