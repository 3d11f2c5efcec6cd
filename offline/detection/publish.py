"""Publish a detector: FP32 always, INT8 and BF16 through the mAP@0.5 gate.

Every detector enters the repository here: the project's digit detector
(`offline.detection.build`) and a user's YOLOv8-style export (`offline.importing.detection`).
Each INT8 method (`offline.quantize`) is calibrated on the release's calibration images and
judged by mAP@0.5 on its validation images, sent as PNG or JPEG through the serving path
(`offline.detection.evaluate`); the best is published when it is at most `max_drop_points`
below FP32. Validation images without labelled boxes are judged against FP32's own boxes
(each variant's mAP@0.5 with FP32's answers at the served score threshold as the truth), so
FP32 scores 1 and the gate measures what quantization changed. BF16 is tried where the CPU
has it and published where it passes the same gate and also pays (`BF16_MIN_SPEEDUP`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.timing import time_backend, time_interleaved
from offline.card import Bf16Decision, PerfRow
from offline.detection.card import (
    DetectionBuild,
    DetectionEvaluation,
    DetectorCard,
    enforce,
    judge,
)
from offline.detection.evaluate import Found, Truth, detect, map50
from offline.quantize import QUANTIZERS, failure_reason
from runners.backends import BACKENDS, create_backend
from runners.errors import ModelImportError
from runners.precision import bf16_unavailable
from runners.preprocessing import ImageLimits, PreprocessSpec
from runners.repository import Batching, ModelEntry, TensorSpec, Variant, write_model
from runners.settings import BackendSettings
from runners.tasks.detection import DETECTION, DetectionParameters

log = logging.getLogger(__name__)

# BF16 is published where it also pays: OpenVINO in BF16 this many times the faster FP32
# backend (offline.publish's rule for classifiers).
BF16_MIN_SPEEDUP = 1.2
MAX_DROP_POINTS = 1.0  # INT8 (and BF16) mAP@0.5 below FP32's, in points


@dataclass
class DetectorRelease:
    """What a detector is, the images that judge it, and what its card says of it."""

    family: str
    fp32_onnx: Path
    spec: PreprocessSpec
    labels: tuple[str, ...]
    input_name: str
    output_name: str
    anchors: int
    batching: Batching
    validation: Sequence[bytes]
    validation_description: str
    calibration: Sequence[bytes]
    calibration_description: str
    summary: str
    how: str
    reproduce: str
    # Labelled boxes of the validation images; None: judged against FP32's own boxes.
    truth: Truth | None = None
    parameters: DetectionParameters = field(default_factory=DetectionParameters)
    quantizers: tuple[str, ...] = tuple(QUANTIZERS)
    measure_duration_s: float = 1.0
    max_drop_points: float = MAX_DROP_POINTS
    bf16: bool = True  # False: no BF16 variant is tried


def release_entry(
    release: DetectorRelease, repository: Path, variant: Variant, backend: str = "onnxruntime"
) -> ModelEntry:
    return ModelEntry(
        name=f"{release.family}_{variant}",
        family=release.family,
        variant=variant,
        version=1,
        directory=repository / f"{release.family}_{variant}",
        task=DETECTION.name,
        task_parameters=release.parameters.as_strings(),
        inputs=(TensorSpec(name=release.input_name, dims=release.spec.sample_shape),),
        outputs=(
            TensorSpec(name=release.output_name, dims=(4 + len(release.labels), release.anchors)),
        ),
        labels=release.labels,
        preprocess=release.spec,
        batching=release.batching,
        preferred_backend=backend,  # type: ignore[arg-type]
    )


def _measure(files: dict[str, Path], duration_s: float) -> list[PerfRow]:
    rows = []
    for variant, path in files.items():
        for backend, engine_class in BACKENDS.items():
            if engine_class.unsupported(variant) is not None:  # type: ignore[arg-type]
                continue
            engine = create_backend(backend, path, BackendSettings(), variant)  # type: ignore[arg-type]
            engine.load()
            for size in (1, 8):
                timing = time_backend(engine, size, duration_s=duration_s)
                rows.append(
                    PerfRow(
                        variant=variant, backend=backend, batch_size=size,
                        images_per_s=timing.images_per_s, p50_ms=timing.p50_ms,
                        p99_ms=timing.p99_ms,
                    )
                )  # fmt: skip
    return rows


def _bf16_speedup(fp32_onnx: Path, duration_s: float) -> float:
    """OpenVINO in BF16 against the faster FP32 backend, timed side by side in one run (as
    `offline.publish` judges a classifier's BF16 variant)."""
    contenders = {}
    for name, backend, precision in (
        ("fp32 onnxruntime", "onnxruntime", "fp32"),
        ("fp32 openvino", "openvino", "fp32"),
        ("bf16 openvino", "openvino", "bf16"),
    ):
        engine = create_backend(backend, fp32_onnx, BackendSettings(), precision)  # type: ignore[arg-type]
        engine.load()
        contenders[name] = engine
    timings = time_interleaved(contenders, 8, rounds=5, round_s=max(0.2, duration_s / 2))
    fp32 = max(timings["fp32 onnxruntime"].images_per_s, timings["fp32 openvino"].images_per_s)
    return timings["bf16 openvino"].images_per_s / fp32


def _fastest(performance: Sequence[PerfRow], variant: str, batch_size: int = 8) -> str:
    """The fastest backend the card's performance rows show for a variant at `batch_size`
    (ONNX Runtime for a variant without rows: one the gate refused)."""
    rows = [r for r in performance if r.variant == variant and r.batch_size == batch_size]
    return max(rows, key=lambda r: r.images_per_s).backend if rows else "onnxruntime"


def _calibration(release: DetectorRelease, entry: ModelEntry) -> np.ndarray:
    """The calibration images as the served preprocessing makes them; one that does not
    decode is named."""
    prepared = DETECTION.prepare(entry, release.calibration, ImageLimits())
    for index, failure in enumerate(prepared.failures):
        if failure is not None:
            raise ModelImportError(f"calibration image {index}: {failure.message}")
    return prepared.inputs[release.input_name]


def publish_detector(release: DetectorRelease, repository: Path) -> DetectorCard:
    """Quantize, judge, measure and write the variants into `repository`; raise
    AccuracyGateFailed (after writing FP32) when the gate refuses INT8."""
    family, classes = release.family, len(release.labels)
    with tempfile.TemporaryDirectory(prefix=f"detector-{family}-") as scratch:
        # The served file may be about to be replaced by its own copy: read it aside.
        fp32_onnx = Path(scratch) / "model.onnx"
        shutil.copyfile(release.fp32_onnx, fp32_onnx)
        served = release_entry(release, repository, "fp32")
        fp32_answers = detect(served, fp32_onnx, release.validation)
        truth = release.truth or Found.of(fp32_answers, release.parameters.score_threshold)
        scores = {"fp32": map50(truth, fp32_answers, classes)}
        log.info("%s: fp32 mAP@0.5 %.4f", family, scores["fp32"])
        calibration = _calibration(release, served)
        candidates: dict[str, tuple[float, Path]] = {}
        failed: dict[str, str] = {}
        for method in release.quantizers:
            out = Path(scratch) / f"int8_{method}.onnx"
            try:
                QUANTIZERS[method](fp32_onnx, out, calibration)
                answers = detect(served, out, release.validation, precision="int8")
            except Exception as exc:  # one quantizer's toolkit failing leaves the others
                failed[method] = failure_reason(exc)
                log.warning("%s: quantizer %s failed: %s", family, method, failed[method])
                continue
            candidates[method] = (map50(truth, answers, classes), out)
            log.info("%s: int8 %s mAP@0.5 %.4f", family, method, candidates[method][0])
        if not candidates:
            raise ModelImportError(
                f"{family}: no INT8 quantizer succeeded ("
                + "; ".join(f"{m}: {why}" for m, why in failed.items())
                + ")"
            )
        method = max(candidates, key=lambda m: candidates[m][0])
        scores["int8"], int8_path = candidates[method]
        gate = judge("int8", scores["fp32"], scores["int8"], release.max_drop_points)
        files = {"fp32": fp32_onnx}
        if gate.passed:
            files["int8"] = int8_path
        missing = bf16_unavailable()
        if missing is not None:
            bf16 = Bf16Decision(published=False, reason=missing, cpu_has_bf16=False)
        elif not release.bf16:
            bf16 = Bf16Decision(
                published=False,
                reason="not requested (python -m offline detector decides it on a CPU with BF16)",
                cpu_has_bf16=True,
            )
        else:
            answers = detect(served, fp32_onnx, release.validation, "openvino", "bf16")
            scores["bf16"] = map50(truth, answers, classes)
            bf16_gate = judge("bf16", scores["fp32"], scores["bf16"], release.max_drop_points)
            speedup = _bf16_speedup(fp32_onnx, release.measure_duration_s)
            pays = speedup >= BF16_MIN_SPEEDUP
            bf16 = Bf16Decision(
                published=bf16_gate.passed and pays,
                reason=f"{bf16_gate.explain()}; OpenVINO BF16 ran {speedup:.2f}x the faster "
                f"FP32 backend at batch 8 (publishing needs {BF16_MIN_SPEEDUP:.2f}x)",
                cpu_has_bf16=True,
                speedup=speedup,
                probe_batch_size=8,
            )
            if bf16.published:
                files["bf16"] = fp32_onnx
        spec = release.spec
        card = DetectorCard(
            family=family,
            summary=release.summary,
            input=f"{spec.layout} {spec.color_mode} {spec.height}x{spec.width}, {spec.resize}",
            output=f"YOLOv8 [batch, 4 + {classes}, {release.anchors}]",
            thresholds=release.parameters.as_strings(),
            built=DetectionBuild(
                how=release.how,
                reproduce=release.reproduce,
                calibration=release.calibration_description,
                quantization_method=method,
                candidates={m: value for m, (value, _) in candidates.items()},
                failed=failed,
            ),
            evaluation=DetectionEvaluation(
                data=release.validation_description,
                samples=len(release.validation),
                objects=sum(len(c) for c in truth.classes),
                fp32_map50=scores["fp32"],
                int8_map50=scores["int8"],
                bf16_map50=scores.get("bf16"),
            ),
            gate=gate,
            bf16=bf16,
            files={f"{variant}_bytes": path.stat().st_size for variant, path in files.items()},
            performance=_measure(files, release.measure_duration_s),
        )
        extra = card.files_for_repository()
        fp32 = write_model(
            release_entry(release, repository, "fp32", _fastest(card.performance, "fp32")),
            fp32_onnx,
            extra,
        )
        for variant in ("int8", "bf16"):
            backend = _fastest(card.performance, variant)  # bf16: OpenVINO, the one that runs it
            target = release_entry(release, repository, variant, backend)
            if variant in files:
                source = fp32.onnx_path if variant == "bf16" else files[variant]
                write_model(target, source, extra)
            else:
                shutil.rmtree(target.directory, ignore_errors=True)
        enforce(gate, family)
        return card
