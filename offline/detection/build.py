"""The default detector: digits on generated canvases, published FP32, INT8 and BF16.

`build` trains the network (`offline.detection.train`) or takes a given FP32 file, and
publishes it through `offline.detection.publish`: INT8 calibrated on canvases of training
digits, every variant judged by mAP@0.5 on held-out canvases with their exact boxes.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from offline.data import load_splits
from offline.detection import FAMILY
from offline.detection.canvases import CALIBRATION_SEED, HELDOUT_SEED, Canvases, draw
from offline.detection.card import DetectorCard
from offline.detection.network import DEFAULT_WIDTHS, STRIDE
from offline.detection.publish import MAX_DROP_POINTS, DetectorRelease, publish_detector
from offline.detection.train import INPUT_NAME, OUTPUT_NAME
from offline.quantize import QUANTIZERS
from runners.preprocessing import PreprocessSpec
from runners.repository import Batching

SIZE = (96, 96)  # height, width of the model's input and of the generated canvases
LABELS = tuple(str(d) for d in range(10))
SPEC = PreprocessSpec(
    height=SIZE[0], width=SIZE[1], color_mode="L", resize="letterbox", scale=1 / 255
)
BATCHING = Batching(
    max_batch_size=32, preferred_batch_sizes=(8, 16), max_queue_delay_us=2000, max_queue_size=256
)
HELDOUT_CANVASES = 500
CALIBRATION_CANVASES = 256
HELDOUT_DESCRIPTION = (
    "held-out canvases: digits of the held-out MNIST split (never used for training or "
    f"calibration) drawn with their own seed ({HELDOUT_SEED}), sent as PNG through the "
    "serving preprocessing"
)
SUMMARY = (
    "Digit detector (0-9): boxes and classes of handwritten digits on a canvas, a small "
    "anchor-free single-stage network trained on MNIST digits composited onto generated "
    f"canvases. Input: a grayscale image of any size, letterboxed to {SIZE[1]}x{SIZE[0]}."
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
    bf16: bool = True,
) -> DetectorCard:
    """Publish detector_fp32, and detector_int8 (and detector_bf16) where the gate passes
    them, into `repository`; train first when no `fp32_onnx` is given; `bf16` False tries no
    BF16 variant. Raises
    AccuracyGateFailed (after writing FP32) when INT8 is refused."""
    data = data or datasets()
    with tempfile.TemporaryDirectory(prefix="detector-") as scratch:
        if fp32_onnx is None:
            from offline.detection.train import export_onnx, train  # train extra: torch

            splits = load_splits()
            network = train(
                splits.train_images, splits.train_labels, steps=steps,
                widths=widths or DEFAULT_WIDTHS,
            )  # fmt: skip
            fp32_onnx = export_onnx(network, Path(scratch) / "model.onnx", SIZE)
        release = DetectorRelease(
            family=FAMILY, fp32_onnx=fp32_onnx, spec=SPEC, labels=LABELS,
            input_name=INPUT_NAME, output_name=OUTPUT_NAME,
            anchors=(SIZE[0] // STRIDE) * (SIZE[1] // STRIDE), batching=BATCHING,
            validation=data.heldout.pngs(), validation_description=HELDOUT_DESCRIPTION,
            truth=data.heldout, calibration=data.calibration.pngs(),
            calibration_description=(
                f"{len(data.calibration)} canvases of training digits (seed {CALIBRATION_SEED})"
            ),
            summary=SUMMARY,
            how=(
                "offline/detection: canvases of 1-4 MNIST training digits (sides 16-40 px) on "
                "flat, graded, noisy backgrounds, drawn fresh every step; a strided CNN to "
                "stride 8 with a box head (side distances) and a class head; BCE and GIoU "
                f"losses; AdamW, one-cycle schedule, {steps} steps of 32 canvases, one CPU "
                "thread, seeded. Exported with torch.onnx (opset 17, dynamic batch axis, "
                "decoded to YOLOv8's output)."
            ),
            reproduce=".venv/bin/pip install -e '.[train,build]' && make detector",
            quantizers=quantizers, measure_duration_s=measure_duration_s,
            max_drop_points=max_drop_points, bf16=bf16,
        )  # fmt: skip
        return publish_detector(release, repository)
