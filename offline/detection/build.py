"""The default detector: digits on generated canvases, published FP32, INT8 and BF16.

`build` trains the network (`offline.detection.train`) or takes a given FP32 file, quantizes
it with each INT8 method (`offline.quantize`) calibrated on training canvases, judges every
variant by mAP@0.5 on held-out canvases (`offline.detection.evaluate`), and writes the
variants the gate passes into a Triton-layout repository with the detection task's config
(`runners.tasks.detection`) and a card holding mAP per variant, sizes and raw throughput.
BF16 is tried where the CPU has it (`runners.precision`), judged by the same gate, and
published only where it also pays (`BF16_MIN_SPEEDUP`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.timing import time_backend, time_interleaved
from offline.card import PerfRow
from offline.data import load_splits
from offline.detection.canvases import CALIBRATION_SEED, HELDOUT_SEED, Canvases, draw
from offline.detection.card import (
    DetectionBuild,
    DetectionEvaluation,
    DetectorCard,
    enforce,
    judge,
)
from offline.detection.evaluate import detect, map50
from offline.detection.network import DEFAULT_WIDTHS
from offline.detection.train import INPUT_NAME, OUTPUT_NAME
from offline.quantize import QUANTIZERS, failure_reason
from runners.backends import BACKENDS, create_backend
from runners.errors import ModelImportError
from runners.precision import bf16_unavailable
from runners.preprocessing import ImageLimits, PreprocessSpec
from runners.repository import Batching, ModelEntry, TensorSpec, Variant, write_model
from runners.settings import BackendSettings
from runners.tasks.detection import DETECTION, DetectionParameters

log = logging.getLogger(__name__)

FAMILY = "detector"
SIZE = (96, 96)  # height, width of the model's input and of the generated canvases
LABELS = tuple(str(d) for d in range(10))
SPEC = PreprocessSpec(
    height=SIZE[0], width=SIZE[1], color_mode="L", resize="letterbox", scale=1 / 255
)
BATCHING = Batching(
    max_batch_size=32, preferred_batch_sizes=(8, 16), max_queue_delay_us=2000, max_queue_size=256
)
PARAMETERS = DetectionParameters()
MAX_DROP_POINTS = 1.0  # INT8 (and BF16) mAP@0.5 below FP32's, in points
# BF16 is published where it also pays: OpenVINO in BF16 this many times the faster FP32
# backend (offline.publish's rule for classifiers).
BF16_MIN_SPEEDUP = 1.2
HELDOUT_CANVASES = 500
CALIBRATION_CANVASES = 256
HELDOUT_DESCRIPTION = (
    "held-out canvases: digits of the held-out MNIST split (never used for training or "
    f"calibration) drawn with their own seed ({HELDOUT_SEED}), sent as PNG through the "
    "serving preprocessing"
)


@dataclass(frozen=True)
class Datasets:
    heldout: Canvases
    calibration: Canvases


def datasets(heldout: int = HELDOUT_CANVASES, calibration: int = CALIBRATION_CANVASES) -> Datasets:
    """Held-out canvases from held-out digits; calibration canvases from training digits."""
    splits = load_splits()
    return Datasets(
        heldout=draw(splits.test_images, splits.test_labels, heldout, seed=HELDOUT_SEED, size=SIZE),
        calibration=draw(
            splits.train_images,
            splits.train_labels,
            calibration,
            seed=CALIBRATION_SEED,
            size=SIZE,
        ),
    )


def entry(repository: Path, variant: Variant, backend: str = "onnxruntime") -> ModelEntry:
    return ModelEntry(
        name=f"{FAMILY}_{variant}",
        family=FAMILY,
        variant=variant,
        version=1,
        directory=repository / f"{FAMILY}_{variant}",
        task=DETECTION.name,
        task_parameters=PARAMETERS.as_strings(),
        inputs=(TensorSpec(name=INPUT_NAME, dims=SPEC.sample_shape),),
        outputs=(
            TensorSpec(
                name=OUTPUT_NAME,
                dims=(4 + len(LABELS), (SIZE[0] // 8) * (SIZE[1] // 8)),
            ),
        ),
        labels=LABELS,
        preprocess=SPEC,
        batching=BATCHING,
        preferred_backend=backend,  # type: ignore[arg-type]
    )


def _calibration(data: Canvases) -> np.ndarray:
    """Calibration canvases as the served preprocessing makes them."""
    prepared = DETECTION.prepare(entry(Path("."), "fp32"), data.pngs(), ImageLimits())
    return prepared.inputs[INPUT_NAME]


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


def build(
    repository: Path,
    fp32_onnx: Path | None = None,
    *,
    steps: int = 2400,
    data: Datasets | None = None,
    widths: tuple[int, int, int, int] | None = None,
    quantizers: tuple[str, ...] = tuple(QUANTIZERS),
    measure_duration_s: float = 1.0,
    max_drop_points: float = MAX_DROP_POINTS,
) -> DetectorCard:
    """Publish detector_fp32, and detector_int8 (and detector_bf16) where the gate passes
    them, into `repository`; train first when no `fp32_onnx` is given. Raises
    AccuracyGateFailed (after writing FP32) when INT8 is refused."""
    data = data or datasets()
    held_pngs = data.heldout.pngs()
    with tempfile.TemporaryDirectory(prefix="detector-") as scratch:
        if fp32_onnx is None:
            from offline.detection.train import export_onnx, train  # train extra: torch

            splits = load_splits()
            network = train(
                splits.train_images, splits.train_labels, steps=steps,
                widths=widths or DEFAULT_WIDTHS,
            )  # fmt: skip
            fp32_onnx = export_onnx(network, Path(scratch) / "model.onnx", SIZE)
        else:  # the served file may be about to be replaced by its own copy: read it aside
            copy = Path(scratch) / "model.onnx"
            shutil.copyfile(fp32_onnx, copy)
            fp32_onnx = copy
        served = entry(repository, "fp32")
        scores = {"fp32": map50(data.heldout, detect(served, fp32_onnx, held_pngs), len(LABELS))}
        log.info("%s: fp32 mAP@0.5 %.4f", FAMILY, scores["fp32"])
        calibration = _calibration(data.calibration)
        candidates: dict[str, tuple[float, Path]] = {}
        failed: dict[str, str] = {}
        for method in quantizers:
            out = Path(scratch) / f"int8_{method}.onnx"
            try:
                QUANTIZERS[method](fp32_onnx, out, calibration)
                answers = detect(served, out, held_pngs, precision="int8")
            except Exception as exc:  # one quantizer's toolkit failing leaves the others
                failed[method] = failure_reason(exc)
                log.warning("%s: quantizer %s failed: %s", FAMILY, method, failed[method])
                continue
            candidates[method] = (map50(data.heldout, answers, len(LABELS)), out)
            log.info("%s: int8 %s mAP@0.5 %.4f", FAMILY, method, candidates[method][0])
        if not candidates:
            raise ModelImportError(
                f"{FAMILY}: no INT8 quantizer succeeded ("
                + "; ".join(f"{m}: {why}" for m, why in failed.items())
                + ")"
            )
        method = max(candidates, key=lambda m: candidates[m][0])
        scores["int8"], int8_path = candidates[method]
        gate = judge("int8", scores["fp32"], scores["int8"], max_drop_points)
        files = {"fp32": fp32_onnx}
        if gate.passed:
            files["int8"] = int8_path
        missing = bf16_unavailable()
        if missing is not None:
            bf16 = f"not tried: {missing}"
        else:
            answers = detect(served, fp32_onnx, held_pngs, "openvino", "bf16")
            scores["bf16"] = map50(data.heldout, answers, len(LABELS))
            bf16_gate = judge("bf16", scores["fp32"], scores["bf16"], max_drop_points)
            speedup = _bf16_speedup(fp32_onnx, measure_duration_s)
            pays = speedup >= BF16_MIN_SPEEDUP
            bf16 = (
                f"{'published' if bf16_gate.passed and pays else 'not published'}: "
                f"{bf16_gate.explain()}; OpenVINO BF16 ran {speedup:.2f}x the faster FP32 "
                f"backend at batch 8 (publishing needs {BF16_MIN_SPEEDUP:.2f}x)"
            )
            if bf16_gate.passed and pays:
                files["bf16"] = fp32_onnx
        performance = _measure(files, measure_duration_s)
        card = DetectorCard(
            family=FAMILY,
            summary=(
                "Digit detector (0-9): boxes and classes of handwritten digits on a canvas, a "
                "small anchor-free single-stage network trained on MNIST digits composited "
                "onto generated canvases. Input: a grayscale image of any size, letterboxed "
                f"to {SIZE[1]}x{SIZE[0]}."
            ),
            input=f"{SPEC.layout} {SPEC.color_mode} {SIZE[0]}x{SIZE[1]}, letterbox",
            output=f"YOLOv8 [batch, 4 + {len(LABELS)}, anchors]",
            thresholds=PARAMETERS.as_strings(),
            built=DetectionBuild(
                how=(
                    "offline/detection: canvases of 1-4 MNIST training digits (sides 16-40 px) "
                    "on flat, graded, noisy backgrounds, drawn fresh every step; a strided CNN "
                    "to stride 8 with a box head (side distances) and a class head; BCE and "
                    f"GIoU losses; AdamW, one-cycle schedule, {steps} steps of 32 canvases, one "
                    "CPU thread, seeded. Exported with torch.onnx (opset 17, dynamic batch "
                    "axis, decoded to YOLOv8's output)."
                ),
                reproduce=".venv/bin/pip install -e '.[train,build]' && make detector",
                calibration=f"{len(calibration)} canvases of training digits "
                f"(seed {CALIBRATION_SEED})",
                quantization_method=method,
                candidates={m: value for m, (value, _) in candidates.items()},
                failed=failed,
            ),
            evaluation=DetectionEvaluation(
                data=HELDOUT_DESCRIPTION,
                samples=len(data.heldout),
                objects=sum(len(c) for c in data.heldout.classes),
                fp32_map50=scores["fp32"],
                int8_map50=scores["int8"],
                bf16_map50=scores.get("bf16"),
            ),
            gate=gate,
            bf16=bf16,
            files={f"{variant}_bytes": path.stat().st_size for variant, path in files.items()},
            performance=performance,
        )
        extra = card.files_for_repository()
        fp32 = write_model(entry(repository, "fp32"), fp32_onnx, extra)
        for variant in ("int8", "bf16"):
            backend = "openvino" if variant == "bf16" else "onnxruntime"
            target = entry(repository, variant, backend)
            if variant in files:
                source = fp32.onnx_path if variant == "bf16" else files[variant]
                write_model(target, source, extra)
            else:
                shutil.rmtree(target.directory, ignore_errors=True)
        enforce(gate, FAMILY)
        return card
