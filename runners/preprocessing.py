"""One decode-and-preprocess function shared by every front end.

`decode_and_preprocess(data, spec, limits)` turns encoded image bytes into one model-ready
float32 sample (CHW or HWC, without the batch axis). Limits are checked from the header,
before any pixel is decoded: Pillow's own bomb limit (~179 Mpx) is far too high for a server.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class PreprocessSpec(BaseModel):
    """How an image becomes the model's input tensor."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    height: int = Field(gt=0, description="Model input height in pixels.")
    width: int = Field(gt=0, description="Model input width in pixels.")
    color_mode: Literal["L", "RGB"] = Field(description="Grayscale (1 channel) or colour (3).")
    channel_order: Literal["RGB", "BGR"] = Field(
        default="RGB", description="Channel order of colour input (ignored for L)."
    )
    layout: Literal["NCHW", "NHWC"] = Field(default="NCHW", description="Input tensor layout.")
    scale: float = Field(default=1 / 255, description="Multiplier applied to 0..255 pixels first.")
    mean: tuple[float, ...] = Field(default=(0.0,), description="Per-channel mean, after scale.")
    std: tuple[float, ...] = Field(default=(1.0,), description="Per-channel std, after scale.")
    resize: Literal["stretch", "shorter_side", "letterbox"] = Field(
        default="stretch",
        description=(
            "stretch: resize to height x width ignoring aspect; shorter_side: scale the shorter "
            "side to resize_shorter_to (or the input size) keeping aspect, then crop; "
            "letterbox: fit inside keeping aspect and pad with pad_value."
        ),
    )
    resize_shorter_to: int | None = Field(
        default=None, description="Shorter side after resize, e.g. 256 for 224 crops."
    )
    crop: Literal["center", "none"] = Field(
        default="center", description="Crop to height x width after a shorter_side resize."
    )
    pad_value: int = Field(default=0, ge=0, le=255, description="Fill for letterbox padding.")
    invert: bool = Field(
        default=False, description="Invert intensities (255 - x), e.g. dark-on-light digits."
    )

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "L" else 3

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """Shape of one preprocessed sample, without the batch axis."""
        if self.layout == "NCHW":
            return (self.channels, self.height, self.width)
        return (self.height, self.width, self.channels)

    @model_validator(mode="after")
    def _check_channels(self) -> PreprocessSpec:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.channels):
                raise ValueError(
                    f"{name} has {len(values)} values; {self.color_mode} input needs 1 or "
                    f"{self.channels}"
                )
        if any(s == 0 for s in self.std):
            raise ValueError("std must not contain 0")
        return self


class ImageLimits(BaseModel):
    """Per-image limits, enforced before pixels are decoded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_bytes: int = Field(default=10 * 1024 * 1024, gt=0, description="Encoded size cap.")
    max_pixels: int = Field(
        default=16_000_000, gt=0, description="Declared width x height cap (~64 MB as RGBA)."
    )
    max_side: int = Field(default=12_000, gt=0, description="Cap on either declared side.")


def decode_and_preprocess(
    data: bytes, spec: PreprocessSpec, limits: ImageLimits | None = None
) -> np.ndarray:
    """Encoded image bytes -> one float32 sample of `spec.sample_shape`."""
    raise NotImplementedError
