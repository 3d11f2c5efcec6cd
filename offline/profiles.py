"""Load profiles: ImageNet-shaped networks with random weights, for performance work only.

They are not classifiers: their cards say so, and the accuracy gate does not apply (their
INT8/FP32 agreement is recorded). Inputs for calibration and agreement are smooth random
images, since there is no real data for 1,000 meaningless classes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from offline.architectures import ARCHITECTURES, save
from offline.card import ModelCard
from offline.publish import PublishRequest, publish
from runners.preprocessing import PreprocessSpec, decode_and_preprocess
from runners.repository import Batching

PROFILES = {"mobilenet_v2": "mobilenetv2", "resnet50": "resnet50"}
SPEC = PreprocessSpec(
    height=224,
    width=224,
    color_mode="RGB",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    resize="shorter_side",
    resize_shorter_to=256,
    crop="center",
)
BATCHING = Batching(
    max_batch_size=32, preferred_batch_sizes=(8, 16), max_queue_delay_us=5000, max_queue_size=128
)
# Two instances in Triton: while one runs a batch on the engine, the other decodes its next
# batch and answers its last one, so the cores never wait on the Python around the engine;
# each instance's engine gets half the cores (`triton_server.native.engine_settings`).
INSTANCES = 2


def synthetic_images(count: int, seed: int) -> np.ndarray:
    """Smooth random RGB images (upsampled noise), sent through the serving preprocessing."""
    import io

    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(small).resize((320, 256), Image.Resampling.BICUBIC).save(buffer, "PNG")
        samples.append(decode_and_preprocess(buffer.getvalue(), SPEC))
    return np.stack(samples)


def build(
    architecture: str,
    repository: Path,
    measure_duration_s: float = 1.0,
    measure_batch_sizes: tuple[int, ...] = (1, 8, 32),
) -> ModelCard:
    family = PROFILES[architecture]
    with tempfile.TemporaryDirectory(prefix=f"{family}-") as scratch:
        fp32 = Path(scratch) / "model.onnx"
        save(ARCHITECTURES[architecture](0), fp32)
        return publish(
            PublishRequest(
                family=family,
                fp32_onnx=fp32,
                spec=SPEC,
                labels=tuple(f"class_{i}" for i in range(1000)),
                input_name="input",
                output_name="logits",
                calibration=synthetic_images(32, seed=1),
                validation=synthetic_images(64, seed=2),
                validation_labels=None,
                validation_description="64 smooth random 256x320 images (no labels exist)",
                calibration_description="32 smooth random images",
                repository=repository,
                batching=BATCHING,
                instances=INSTANCES,
                load_profile=True,
                summary=(
                    f"LOAD PROFILE, NOT A CLASSIFIER: a {architecture} topology with seeded "
                    "random weights (BatchNorm folded), for measuring serving cost of a "
                    "realistic 3x224x224 network. Its predictions mean nothing."
                ),
                how_built=(
                    f"offline/architectures.py builds the {architecture} graph directly with "
                    "onnx.helper (no torch), He-normal weights from numpy seed 0."
                ),
                reproduce=f".venv/bin/python -m offline profile {architecture}",
                measure_duration_s=measure_duration_s,
                measure_batch_sizes=measure_batch_sizes,
            )
        )
