"""Labelled detection data: MNIST digits composited onto canvases, with exact boxes.

Each canvas is a grayscale background (a flat level, a linear gradient and Gaussian noise:
the project's environment ships no photographs, as scikit-image's data set would be) with
one to `max_digits` digits drawn at random positions and sizes, bright ink blended by each
digit's own intensity, so the digit shows as it does in MNIST. A digit's box is the tight
box of its visible pixels (those of at least `INK_FLOOR` intensity after resizing), in
pixel-edge coordinates x1 y1 x2 y2, so a box is exact by construction. Digits barely overlap
(`MAX_OVERLAP`), as in a document rather than a pile.

Canvases are drawn from a seed and a set of digits: training canvases from the training
split, the held-out canvases from the held-out split with their own seed, so no held-out
digit or canvas is ever seen in training or calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from offline.digits import encode_png
from runners.tasks.detection import pairwise_iou

INK_FLOOR = 64  # a resized digit's pixels at or above this intensity make its box
MAX_OVERLAP = 0.1  # IoU a new digit may have with one already drawn
PLACEMENT_TRIES = 20
TRAIN_SEED = 20261205
CALIBRATION_SEED = TRAIN_SEED + 1
HELDOUT_SEED = TRAIN_SEED + 2


@dataclass(frozen=True)
class Canvases:
    """uint8 images (N, H, W); per image, boxes (k, 4) float64 x1 y1 x2 y2 and classes (k,)."""

    images: np.ndarray
    boxes: list[np.ndarray]
    classes: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.images)

    def pngs(self) -> list[bytes]:
        """The canvases as clients send them."""
        return [encode_png(image) for image in self.images]


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    level = rng.uniform(0, 90)
    slope = rng.uniform(-40, 40, 2)
    ys, xs = np.mgrid[0:height, 0:width]
    ramp = slope[0] * ys / height + slope[1] * xs / width
    noise = rng.normal(0, rng.uniform(0, 12), (height, width))
    return np.clip(level + ramp + noise, 0, 255)


def draw(
    digits: np.ndarray,
    labels: np.ndarray,
    count: int,
    *,
    seed: int,
    size: tuple[int, int] = (96, 96),
    max_digits: int = 4,
    sides: tuple[int, int] = (16, 40),
) -> Canvases:
    """`count` canvases of `size` (height, width) from `digits` (uint8 (N, 28, 28), white on
    black) and their labels; digit sides drawn from `sides` (pixels, inclusive)."""
    rng = np.random.default_rng(seed)
    height, width = size
    images = np.empty((count, height, width), np.uint8)
    all_boxes: list[np.ndarray] = []
    all_classes: list[np.ndarray] = []
    for n in range(count):
        canvas = _background(rng, height, width)
        boxes: list[list[float]] = []
        classes: list[int] = []
        for _ in range(int(rng.integers(1, max_digits + 1))):
            pick = int(rng.integers(len(digits)))
            side = int(rng.integers(sides[0], min(sides[1], height, width) + 1))
            glyph = np.asarray(
                Image.fromarray(digits[pick]).resize((side, side), Image.Resampling.BILINEAR)
            )
            rows, cols = np.nonzero(glyph >= INK_FLOOR)
            if not len(rows):
                continue
            for _ in range(PLACEMENT_TRIES):
                top = int(rng.integers(0, height - side + 1))
                left = int(rng.integers(0, width - side + 1))
                box = [
                    left + cols.min(), top + rows.min(), left + cols.max() + 1,
                    top + rows.max() + 1,
                ]  # fmt: skip
                if not boxes or pairwise_iou(np.array([box]), np.array(boxes)).max() <= (
                    MAX_OVERLAP
                ):
                    break
            else:
                continue
            alpha = glyph.astype(np.float64) / 255
            ink = rng.uniform(170, 255)
            patch = canvas[top : top + side, left : left + side]
            canvas[top : top + side, left : left + side] = patch * (1 - alpha) + ink * alpha
            boxes.append([float(v) for v in box])
            classes.append(int(labels[pick]))
        images[n] = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
        all_boxes.append(np.array(boxes, np.float64).reshape(-1, 4))
        all_classes.append(np.array(classes, np.int64))
    return Canvases(images, all_boxes, all_classes)
