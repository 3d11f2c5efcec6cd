"""Real shifts of the held-out digits, for the drift tests and `bench.drift`: each returns
PNG bytes as a client would send them."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from offline.digits import encode_png


def inverted(images: np.ndarray) -> list[bytes]:
    """Black digits on white: a scanner or a client that does not invert."""
    return [encode_png(255 - image) for image in images]


def rotated(images: np.ndarray) -> list[bytes]:
    """Turned a quarter: a camera held sideways. The pixels' statistics stay the same."""
    return [encode_png(np.ascontiguousarray(np.rot90(image))) for image in images]


def blurred(images: np.ndarray, radius: float = 1.5) -> list[bytes]:
    """Out of focus (Gaussian blur)."""
    return [
        encode_png(np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius))))
        for image in images
    ]


def photos(count: int, seed: int = 0) -> list[bytes]:
    """Square crops (28 to 112 pixels) of scikit-learn's two real photos: not digits at all."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    pictures = load_sample_images().images
    out = []
    for _ in range(count):
        picture = pictures[int(rng.integers(len(pictures)))]
        side = int(rng.integers(28, 113))
        top = int(rng.integers(picture.shape[0] - side))
        left = int(rng.integers(picture.shape[1] - side))
        out.append(encode_png(np.ascontiguousarray(picture[top : top + side, left : left + side])))
    return out


SHIFTS = {
    "inverted": inverted,
    "rotated": rotated,
    "blurred": blurred,
}
