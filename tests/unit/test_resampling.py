"""The spec's resampling filters, fit_height and padding, against OpenCV itself (a test-only
dependency): a model trained on an OpenCV pipeline gets the pixels it was trained on."""

from __future__ import annotations

import io
import math
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from runners.preprocessing import (
    PreprocessSpec,
    decode_and_preprocess,
    decode_and_preprocess_many,
)

SIZES = [(37, 111, 48, 192), (100, 300, 48, 120), (20, 30, 48, 70), (333, 97, 48, 50)]


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def pixels_of(sample: np.ndarray) -> np.ndarray:
    """A scale-1, mean-0, std-1 NHWC sample back to uint8 pixels."""
    return np.rint(sample).astype(np.int64)


def spec(**fields: Any) -> PreprocessSpec:
    base: dict[str, Any] = {"color_mode": "RGB", "layout": "NHWC", "scale": 1.0}
    return PreprocessSpec(**{**base, **fields})


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(
    "case",
    [
        ("bilinear", cv2.INTER_LINEAR, 1, 0.01),
        ("bicubic", cv2.INTER_CUBIC, 1, 0.001),
        ("nearest", cv2.INTER_NEAREST, 0, 0.0),
    ],
)
def test_opencv_filters_give_opencv_pixels(
    size: tuple[int, int, int, int], case: tuple[str, int, int, float]
) -> None:
    """Pixels within 1 level of OpenCV's (its fixed-point rounding), in a small share."""
    (h, w, out_h, out_w), (resample, flag, tolerance, share) = size, case
    image = np.random.default_rng(h * w).integers(0, 256, (h, w, 3)).astype(np.uint8)
    ours = pixels_of(
        decode_and_preprocess(png(image), spec(height=out_h, width=out_w, resample=resample))
    )
    theirs = cv2.resize(image, (out_w, out_h), interpolation=flag).astype(np.int64)
    difference = np.abs(ours - theirs)
    assert difference.max() <= tolerance
    assert (difference > 0).mean() <= share


def test_bilinear_is_not_pillows_antialiased_bilinear() -> None:
    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3)).astype(np.uint8)
    opencv = decode_and_preprocess(png(image), spec(height=48, width=64, resample="bilinear"))
    pillow = decode_and_preprocess(png(image), spec(height=48, width=64))
    expected = np.asarray(Image.fromarray(image).resize((64, 48), Image.Resampling.BILINEAR))
    assert (pixels_of(pillow) == expected).all()  # the default, unchanged
    assert np.abs(pixels_of(opencv) - pixels_of(pillow)).mean() > 5


def paddle(image: np.ndarray, height: int = 48, width: int = 192) -> np.ndarray:
    """PaddleOCR's resize_norm_img on a BGR image, as the package writes it."""
    ratio = image.shape[1] / float(image.shape[0])
    resized_w = width if math.ceil(height * ratio) > width else math.ceil(height * ratio)
    resized = cv2.resize(image, (resized_w, height)).astype("float32")
    resized = resized.transpose((2, 0, 1)) / 255
    resized -= 0.5
    resized /= 0.5
    padded = np.zeros((3, height, width), dtype=np.float32)
    padded[:, :, :resized_w] = resized
    return padded


PADDLE = PreprocessSpec(
    height=48, width=192, color_mode="RGB", channel_order="BGR", layout="NCHW",
    scale=1 / 255, mean=(0.5,), std=(0.5,), resize="fit_height", resample="bilinear",
    pad_anchor="top_left", pad_tensor_value=0.0,
)  # fmt: skip


@pytest.mark.parametrize(("h", "w"), [(30, 40), (48, 100), (40, 900), (64, 64), (20, 200)])
def test_fit_height_with_tensor_padding_is_paddleocrs_pipeline(h: int, w: int) -> None:
    rgb = np.random.default_rng(h + w).integers(0, 256, (h, w, 3)).astype(np.uint8)
    ours = decode_and_preprocess(png(rgb), PADDLE)
    theirs = paddle(rgb[:, :, ::-1].copy())  # cv2.imread gives BGR
    assert ours.shape == theirs.shape == (3, 48, 192)
    assert np.abs(ours - theirs).max() <= 2 / 255 / 0.5 + 1e-6
    batch, failures = decode_and_preprocess_many([png(rgb), png(rgb)], PADDLE)
    assert failures == [None, None]
    assert (batch == ours).all()


def test_pad_anchor_and_pad_value_in_pixels() -> None:
    white = np.full((10, 40, 3), 255, np.uint8)  # letterboxed into 40x40: 10 rows of image
    fields = {"height": 40, "width": 40, "resize": "letterbox", "pad_value": 7}
    centred = pixels_of(decode_and_preprocess(png(white), spec(**fields)))
    top = pixels_of(decode_and_preprocess(png(white), spec(**fields, pad_anchor="top_left")))
    assert (centred[15:25] == 255).all() and (centred[:15] == 7).all()
    assert (top[:10] == 255).all() and (top[10:] == 7).all()


def test_defaults_are_the_built_in_models() -> None:
    default = PreprocessSpec(height=28, width=28, color_mode="L")
    assert default.resample == "bilinear_antialias"
    assert default.pad_anchor == "center"
    assert default.pad_tensor_value is None
    assert default.pad_value == 0
