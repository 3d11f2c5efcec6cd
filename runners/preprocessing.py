"""One decode-and-preprocess function shared by every front end.

`decode_and_preprocess(data, spec, limits)` turns encoded image bytes into one model-ready
float32 sample (CHW or HWC, without the batch axis); `decode_and_preprocess_many` does the
same for the images of one request, each failing alone. Limits are checked from the header,
before any pixel is decoded: Pillow's own bomb limit (~179 Mpx) is far too high for a server.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import struct
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from runners.errors import (
    EmptyInput,
    ImageDecodeError,
    ImageTooLarge,
    PayloadTooLarge,
    ServingError,
)


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
    resize: Literal["stretch", "shorter_side", "letterbox", "fit_height"] = Field(
        default="stretch",
        description=(
            "stretch: resize to height x width ignoring aspect; shorter_side: scale the shorter "
            "side to resize_shorter_to (or the input size) keeping aspect, then crop; "
            "letterbox: fit inside keeping aspect, then pad; fit_height: scale to the input "
            "height keeping aspect (width rounded up, capped at the input width, so wider "
            "images are squeezed), then pad, as text recognisers (PaddleOCR) do."
        ),
    )
    resample: Literal["bilinear_antialias", "bilinear", "bicubic", "nearest", "area"] = Field(
        default="bilinear_antialias",
        description=(
            "Resampling filter. bilinear_antialias: Pillow's BILINEAR, which widens its filter "
            "when shrinking (torchvision on PIL images); bilinear: two taps at half-pixel "
            "centres, no antialiasing (OpenCV INTER_LINEAR, torchvision on tensors with "
            "antialias=False); bicubic: OpenCV INTER_CUBIC (a=-0.75, no antialiasing); "
            "nearest: OpenCV INTER_NEAREST (floor(x * scale)); area: pixel-area averaging "
            "(Pillow BOX; OpenCV INTER_AREA when shrinking)."
        ),
    )
    resize_shorter_to: int | None = Field(
        default=None, description="Shorter side after resize, e.g. 256 for 224 crops."
    )
    crop: Literal["center", "none"] = Field(
        default="center", description="Crop to height x width after a shorter_side resize."
    )
    pad_anchor: Literal["center", "top_left"] = Field(
        default="center",
        description="Where letterbox and fit_height put the resized image: centred, or at the "
        "top left with the padding on the right and bottom.",
    )
    pad_value: int = Field(
        default=0,
        ge=0,
        le=255,
        description="Fill for padding, in pixels (0-255, before scale, mean and std); "
        "ignored when pad_tensor_value is set.",
    )
    pad_tensor_value: float | None = Field(
        default=None,
        description="Fill for padding in input-tensor units (after scale, mean and std), e.g. "
        "0 where the original pipeline pads the normalised tensor with zeros; None pads "
        "with pad_value pixels.",
    )
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


_SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
_FORMAT_NAMES = "JPEG, PNG, WebP, BMP or GIF"
_DEFAULT_LIMITS = ImageLimits()

# Pillow's parsers report a malformed file with many exception types (OSError, SyntaxError,
# ValueError, struct.error, EOFError, IndexError, AssertionError...). From untrusted bytes each
# of them means "not a decodable image", so the narrow open and load steps catch them all.
_PILLOW_FAILURES = (Exception,)
_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR = b"\x00\x00\x00\x0dIHDR"  # IHDR is the first chunk and 13 bytes long
_IHDR_FIELDS = struct.Struct(">IIBBBBB")
_CHUNK_HEAD = struct.Struct(">I4s")
_PLAIN_PNG_MODES = {0: "L", 2: "RGB"}  # colour types without palette or alpha
_PLAIN_PNG_MIN = 8 + 25 + 12 + 12  # signature, IHDR, an IDAT and IEND (empty)

_EXIF_ORIENTATION = 0x0112
_QUARTER_TURNS = frozenset({5, 6, 7, 8})  # orientations that swap width and height
_TURNED = frozenset(range(2, 9))  # the orientations exif_transpose acts on

# Pillow's own `thumbnail` keeps at least twice the target size when it decodes a JPEG at a
# reduced DCT scale, so the final resize still has detail to antialias from.
_DRAFT_MARGIN = 2

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "PA"})
_KEYED_TRANSPARENCY_MODES = frozenset({"P", "L", "RGB"})  # `transparency` in info, no alpha band

# Pillow's BILINEAR widens its filter when shrinking (antialiasing), as torchvision's Resize
# does on PIL images; BOX averages pixel areas. The other filters are OpenCV's, done here.
_PILLOW_FILTERS = {
    "bilinear_antialias": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
}
_CUBIC_A = -0.75  # OpenCV's bicubic coefficient (Pillow's is -0.5)
_COEF_SCALE = 2048  # OpenCV's INTER_RESIZE_COEF_SCALE: 11-bit fixed-point weights

# Where the resized image lies in the sample: (top, left, height, width); None: all of it.
Box = tuple[int, int, int, int] | None


def decode_and_preprocess(
    data: bytes, spec: PreprocessSpec, limits: ImageLimits | None = None
) -> np.ndarray:
    """Encoded image bytes -> one float32 sample of `spec.sample_shape`."""
    pixels, box = _pixels(_decode(data, limits or _DEFAULT_LIMITS, spec), spec)
    return _pad_tensor(normalise(pixels[np.newaxis], spec), [box], spec)[0]


@dataclass(frozen=True)
class InputStats:
    """What the prediction log keeps of an image: its size and format as sent, and the mean
    and standard deviation of its pixels (0-255) as the model sees them, resized."""

    width: int
    height: int
    format: str
    pixel_mean: float
    pixel_std: float


def decode_and_preprocess_many(
    images: Sequence[bytes],
    spec: PreprocessSpec,
    limits: ImageLimits | None = None,
    stats: list[InputStats] | None = None,
) -> tuple[np.ndarray, list[ServingError | None]]:
    """The images of one request -> (float32 batch of those that decoded, error per image).

    The batch holds the good images in input order; the list has None in their slots and the
    error in each bad image's slot. Each image is decoded and checked exactly as
    `decode_and_preprocess` does it; the float conversion is one pass over the whole batch.
    Given `stats`, each good image's `InputStats` is appended to it, in batch order.
    """
    limits = limits or _DEFAULT_LIMITS
    failures: list[ServingError | None] = [None] * len(images)
    pixels = np.empty((len(images), *spec.sample_shape), dtype=np.uint8)
    boxes: list[Box] = []
    good = 0
    for i, data in enumerate(images):
        try:
            image = _decode(data, limits, spec)
            pixels[good], box = _pixels(image, spec)
        except ServingError as exc:
            failures[i] = exc
        else:
            if stats is not None:
                mean, std = _mean_and_std(pixels[good])
                stats.append(
                    InputStats(
                        image.width, image.height, image.format or _sniff(data) or "unknown",
                        mean, std,
                    )
                )  # fmt: skip
            boxes.append(box)
            good += 1
    return _pad_tensor(normalise(pixels[:good], spec), boxes, spec), failures


def _mean_and_std(sample: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of uint8 pixels from integer sums: exact, and cheaper than
    NumPy's float mean() and std(), which run on every decoded image. A pixel's square
    (at most 255 * 255) fits 16 bits, so the squares are taken in place in a uint16 copy and
    summed into 64 bits."""
    values = sample.reshape(-1).astype(np.uint16)
    count = values.size
    mean = int(values.sum(dtype=np.uint64)) / count
    np.multiply(values, values, out=values)
    variance = int(values.sum(dtype=np.uint64)) / count - mean * mean
    return mean, max(variance, 0.0) ** 0.5


def decode_image(
    data: bytes, limits: ImageLimits | None = None, spec: PreprocessSpec | None = None
) -> Image.Image:
    """Encoded bytes -> the first frame as a loaded, upright image in the file's own mode.

    Limits are checked from the header before any pixel is decoded. Given `spec`, a large JPEG
    is decoded at a reduced scale that still covers the size `spec` resizes it to.
    """
    return _decode(data, limits or _DEFAULT_LIMITS, spec)


def preprocess_image(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """A decoded image in any Pillow mode -> one float32 sample of `spec.sample_shape`."""
    pixels, box = _pixels(image, spec)
    return _pad_tensor(normalise(pixels[np.newaxis], spec), [box], spec)[0]


def normalise(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 samples (batch axis first, `spec.sample_shape` each) -> the model's float32 input.

    Invert, scale, mean and std in one multiply-add per element (`_affine`), over the whole
    batch at once: one pass from uint8 into the contiguous output, one in place, no float
    temporaries.
    """
    gain, offset = _affine(spec)
    batch = np.empty(pixels.shape, dtype=np.float32)
    np.multiply(pixels, gain, out=batch)
    batch += offset
    return batch


def _pad_tensor(batch: np.ndarray, boxes: Sequence[Box], spec: PreprocessSpec) -> np.ndarray:
    """Overwrite the padding of each sample with `spec.pad_tensor_value`, in place."""
    value = spec.pad_tensor_value
    if value is None:
        return batch
    rows, cols = (1, 2) if spec.layout == "NCHW" else (0, 1)
    for sample, box in zip(batch, boxes, strict=True):
        if box is None:
            continue
        top, left, height, width = box
        index: list[slice] = [slice(None)] * 3
        for axis, start, stop in ((rows, top, top + height), (cols, left, left + width)):
            for part in (slice(None, start), slice(stop, None)):
                index[axis] = part
                sample[tuple(index)] = value
            index[axis] = slice(start, stop)
    return batch


def _decode(data: bytes, limits: ImageLimits, spec: PreprocessSpec | None) -> Image.Image:
    """decode_image's work."""
    if not data:
        raise EmptyInput("the image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(
            f"the image is {len(data)} bytes; the limit is {limits.max_bytes} bytes"
        )
    plain = _plain_png(data, limits)  # it opens no file with Pillow: no warning to catch
    if plain is not None:
        return plain
    with _pillow_warnings():
        return _decode_file(data, limits, spec)


def _decode_file(data: bytes, limits: ImageLimits, spec: PreprocessSpec | None) -> Image.Image:
    """Any supported file through Pillow's readers; the caller holds `_pillow_warnings()`."""
    image = _open(data, limits)
    _check_declared_size(image.size, limits)
    # Only Pillow's own antialiased reduction tolerates a DCT-scaled decode; the OpenCV-style
    # filters read every source pixel, as OpenCV's full-size decode gives them.
    if spec is not None and image.format == "JPEG" and spec.resample == "bilinear_antialias":
        _draft(image, spec)
    try:
        image.load()
    except _BOMB as exc:  # a GIF frame may reach beyond the declared screen
        raise _too_large(exc, limits) from exc
    except _PILLOW_FAILURES as exc:
        raise ImageDecodeError(
            f"corrupt or truncated {image.format} image data ({type(exc).__name__}: {exc})"
        ) from exc
    # A broken EXIF block does not make the pixels wrong: show them as stored, as browsers do.
    with contextlib.suppress(*_PILLOW_FAILURES):
        # exif_transpose acts on these orientations only; asking first skips its setup, a
        # noticeable share of a small image's decode, for the images that have none.
        if image.getexif().get(_EXIF_ORIENTATION, 1) in _TURNED:
            ImageOps.exif_transpose(image, in_place=True)
    return image


def _pixels(image: Image.Image, spec: PreprocessSpec) -> tuple[np.ndarray, Box]:
    """A decoded image in any Pillow mode -> its uint8 sample (`spec.sample_shape`, a view)
    and where the resized image lies in it when padding surrounds it."""
    image = _to_color_mode(image, spec.color_mode)
    pixels, box = _resize(image, spec)
    if spec.color_mode == "RGB" and spec.channel_order == "BGR":
        pixels = pixels[:, :, ::-1]
    if spec.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    return pixels, box


def _array(image: Image.Image) -> np.ndarray:
    """What np.asarray(image) returns, without its array-interface detour (cheaper per image):
    after _to_color_mode the mode is L or RGB, 8 bits per channel, rows top to bottom."""
    width, height = image.size
    return np.frombuffer(image.tobytes(), dtype=np.uint8).reshape(height, width, -1)


@contextlib.contextmanager
def _pillow_warnings() -> Iterator[None]:
    """Turn Pillow's bomb warning into an error and silence its remarks on malformed metadata.

    Before Python 3.14 `catch_warnings` swaps process-wide state, so concurrent requests can
    race on it. The worst a race does is let one bomb warning reach the log (the pixel limit
    still refuses that image) or leave these two Pillow-only filters installed.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
        yield


def _open(data: bytes, limits: ImageLimits) -> ImageFile.ImageFile:
    """Read the header only: Image.open is lazy and decodes no pixels."""
    try:
        return Image.open(io.BytesIO(data), formats=_SUPPORTED_FORMATS)
    except _BOMB as exc:
        raise _too_large(exc, limits) from exc
    except UnidentifiedImageError as exc:
        claimed = _sniff(data)
        problem = (
            f"its {claimed} header is corrupt or truncated"
            if claimed
            else f"it is not a {_FORMAT_NAMES} image"
        )
        raise ImageDecodeError(f"cannot decode the image: {problem}") from exc
    except _PILLOW_FAILURES as exc:
        raise ImageDecodeError(
            f"cannot decode the image: its {_sniff(data) or 'image'} header is corrupt or "
            f"truncated ({type(exc).__name__}: {exc})"
        ) from exc


def _plain_png(data: bytes, limits: ImageLimits) -> Image.Image | None:
    """A plain PNG decoded by Pillow's own PNG pixel decoder; None for any other input.

    Plain: 8-bit grayscale or RGB, not interlaced, within the limits, and nothing but IHDR
    (its checksum right), one or more IDAT and an empty IEND that ends the data. Such a file
    has no palette, transparency, orientation, metadata or animation, so Pillow's PNG reader
    would do nothing with it but what this does: read the size, then run its "zip" decoder
    (zlib and the PNG row filters, in C) over the IDAT data. The Python around that decoder is
    most of a small digit's decode, which this path skips. Anything else, odd, broken or too
    large, gets None and goes the full way, which decides and words any error.
    """
    if len(data) < _PLAIN_PNG_MIN or not data.startswith(_PNG_SIGNATURE):
        return None
    if data[8:16] != _IHDR:
        return None
    if zlib.crc32(data[12:29]) != int.from_bytes(data[29:33], "big"):
        return None
    width, height, depth, colour, compression, filtering, interlace = _IHDR_FIELDS.unpack_from(
        data, 16
    )
    mode = _PLAIN_PNG_MODES.get(colour)
    if mode is None or depth != 8 or compression or filtering or interlace:
        return None
    pixels = width * height
    pillow_cap = Image.MAX_IMAGE_PIXELS or pixels  # Pillow's bomb warning threshold
    if not 0 < pixels <= min(limits.max_pixels, pillow_cap) or max(width, height) > limits.max_side:
        return None
    idat = []
    position = 33
    while True:
        if position + 12 > len(data):
            return None
        length, kind = _CHUNK_HEAD.unpack_from(data, position)
        end = position + 12 + length
        if kind == b"IDAT" and end <= len(data):
            idat.append(data[position + 8 : end - 4])
            position = end
        elif kind == b"IEND" and length == 0 and end == len(data) and idat:
            break
        else:
            return None
    try:
        return Image.frombytes(mode, (width, height), b"".join(idat), "zip", mode)
    except _PILLOW_FAILURES:  # short, corrupt or not zlib: the full way words it
        return None


def _sniff(data: bytes) -> str:
    """The supported format the leading bytes claim (error messages, the log's statistics)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith(b"BM"):
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return ""


def _check_declared_size(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"the image declares an empty size {width}x{height}")
    if width * height > limits.max_pixels or max(width, height) > limits.max_side:
        raise ImageTooLarge(
            f"the image declares {width}x{height} ({width * height} pixels); the limit is "
            f"{limits.max_pixels} pixels and {limits.max_side} pixels per side"
        )


def _too_large(exc: Exception, limits: ImageLimits) -> ImageTooLarge:
    """Pillow's own bomb guard fired; its message carries the declared pixel count."""
    return ImageTooLarge(
        f"the image declares too many pixels ({exc}); the limit is {limits.max_pixels} pixels "
        f"and {limits.max_side} pixels per side"
    )


def _draft(image: ImageFile.ImageFile, spec: PreprocessSpec) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale when the model needs far fewer pixels.

    DCT scaling skips most of the decoding work and memory of a large photo, and a grayscale
    model gets the luma plane straight from the decoder instead of RGB.
    """
    width, height = image.size
    turned = False
    with contextlib.suppress(*_PILLOW_FAILURES):
        turned = image.getexif().get(_EXIF_ORIENTATION, 1) in _QUARTER_TURNS
    # Until it is transposed, a quarter-turned image is sideways to the sizes the spec names.
    if turned:
        width, height = height, width
    target_w, target_h = _resized_size(width, height, spec)
    request = (target_w * _DRAFT_MARGIN, target_h * _DRAFT_MARGIN)
    if turned:
        request = request[::-1]
    image.draft("L" if spec.color_mode == "L" else None, request)


def _to_color_mode(image: Image.Image, color_mode: Literal["L", "RGB"]) -> Image.Image:
    """Any Pillow mode -> 8-bit L or RGB, with transparency composited on white."""
    if image.mode in _KEYED_TRANSPARENCY_MODES and "transparency" in image.info:
        image = image.convert("RGBA")
    mode = image.mode
    if mode in _ALPHA_MODES:
        image = _on_white(image)
    elif mode in _SIXTEEN_BIT_MODES:
        # 65535 / 257 = 255 exactly: scale the range down rather than clip it to 8 bits.
        wide = np.clip(np.asarray(image), 0, 65535) / 257.0
        image = Image.fromarray(np.rint(wide).astype(np.uint8))
    elif mode == "F":
        floats = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)
        image = Image.fromarray(np.rint(np.clip(floats, 0, 255)).astype(np.uint8))
    elif mode == "1":
        image = image.convert("L")
    elif mode not in ("L", "RGB"):  # P, CMYK, YCbCr, LAB, HSV, RGBX...
        try:
            image = image.convert("RGB")
        except ValueError as exc:
            raise ImageDecodeError(f"cannot convert a {mode} image to RGB") from exc
    return image if image.mode == color_mode else image.convert(color_mode)


def _on_white(image: Image.Image) -> Image.Image:
    """Blend by alpha over white, so the colour hidden under transparent pixels never shows."""
    if image.mode not in ("RGBA", "LA"):  # premultiplied or palette alpha
        image = image.convert("RGBA")
    base = "L" if image.mode == "LA" else "RGB"
    canvas = Image.new(base, image.size, "white")
    canvas.paste(image.convert(base), mask=image.getchannel("A"))
    return canvas


def _resized_size(width: int, height: int, spec: PreprocessSpec) -> tuple[int, int]:
    """The size an image of `width` x `height` is resized to, before any crop or padding."""
    if spec.resize == "shorter_side" and spec.crop == "center":
        shorter = spec.resize_shorter_to or max(spec.height, spec.width)
        # torchvision's rule: the shorter side becomes exact, the longer one is truncated.
        if width <= height:
            return shorter, max(1, int(shorter * height / width))
        return max(1, int(shorter * width / height)), shorter
    if spec.resize == "letterbox":
        fit = min(spec.width / width, spec.height / height)
        return (
            min(spec.width, max(1, round(width * fit))),
            min(spec.height, max(1, round(height * fit))),
        )
    if spec.resize == "fit_height":
        # PaddleOCR's rule: ceil(height * aspect), the input width at most.
        return min(spec.width, max(1, math.ceil(spec.height * (width / height)))), spec.height
    # stretch, and shorter_side without a crop: keeping the aspect and then stretching to the
    # exact size is one stretch, so it is done as one resize (one resampling, not two).
    return spec.width, spec.height


def placement(width: int, height: int, spec: PreprocessSpec) -> tuple[int, int, int, int]:
    """Where an image of `width` x `height` lies in its sample after a letterbox or fit_height
    resize: (top, left, resized height, resized width), as `_resize` places it. A detector
    maps its boxes back to the image's own pixels with it."""
    if spec.resize not in ("letterbox", "fit_height"):
        raise ValueError(f"a {spec.resize} resize places no image inside padding")
    resized_w, resized_h = _resized_size(width, height, spec)
    left, top = (0, 0)
    if spec.pad_anchor == "center":
        left, top = (spec.width - resized_w) // 2, (spec.height - resized_h) // 2
    return top, left, resized_h, resized_w


def _resize(image: Image.Image, spec: PreprocessSpec) -> tuple[np.ndarray, Box]:
    """Resize, then crop or pad to the input size: HxWxC uint8 pixels and the image's box."""
    size = _resized_size(*image.size, spec)
    if image.size == size:
        pixels = _array(image)
    elif spec.resample in _PILLOW_FILTERS:
        pixels = _array(image.resize(size, _PILLOW_FILTERS[spec.resample]))
    else:
        pixels = _resample(_array(image), size, spec.resample)
    target = (spec.width, spec.height)
    if size == target:
        return pixels, None
    if spec.resize in ("letterbox", "fit_height"):
        left, top = (0, 0)
        if spec.pad_anchor == "center":
            left, top = (target[0] - size[0]) // 2, (target[1] - size[1]) // 2
        return _place(pixels, left, top, target, spec.pad_value), (top, left, size[1], size[0])
    # Centre crop with torchvision's rounding; any part outside the image is 0, as Pillow's
    # crop fills it.
    left = round((size[0] - target[0]) / 2.0)
    top = round((size[1] - target[1]) / 2.0)
    return _place(pixels, -left, -top, target, 0), None


def _place(
    pixels: np.ndarray, left: int, top: int, target: tuple[int, int], fill: int
) -> np.ndarray:
    """`pixels` with its top-left corner at (left, top) of a `target` canvas of `fill`."""
    width, height = target
    canvas = np.full((height, width, pixels.shape[2]), fill, dtype=np.uint8)
    src_top, src_left = max(0, -top), max(0, -left)
    dst_top, dst_left = max(0, top), max(0, left)
    rows = min(height - dst_top, pixels.shape[0] - src_top)
    cols = min(width - dst_left, pixels.shape[1] - src_left)
    if rows > 0 and cols > 0:
        canvas[dst_top : dst_top + rows, dst_left : dst_left + cols] = pixels[
            src_top : src_top + rows, src_left : src_left + cols
        ]
    return canvas


def _taps(source: int, target: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights, [target, taps] each, of OpenCV's resize along one axis."""
    scale = source / target
    out = np.arange(target, dtype=np.float64)
    if kind == "nearest":
        index = np.minimum(np.floor(out * scale).astype(np.int64), source - 1)
        return index[:, np.newaxis], np.ones((target, 1))
    # Half-pixel centres, rounded to float32 as OpenCV computes them.
    centre = ((out + 0.5) * scale - 0.5).astype(np.float32).astype(np.float64)
    start = np.floor(centre).astype(np.int64)
    frac = centre - start
    if kind == "bilinear":
        # OpenCV clamps the position, not only the index, at both edges.
        low, high = start < 0, start >= source - 1
        frac[low | high] = 0.0
        start = np.clip(start, 0, source - 1)
        index = np.stack([start, np.minimum(start + 1, source - 1)], axis=1)
        return index, np.stack([1.0 - frac, frac], axis=1)
    # bicubic: four taps, edges replicated.
    offsets = np.arange(-1, 3)
    index = np.clip(start[:, np.newaxis] + offsets, 0, source - 1)
    distance = np.abs(frac[:, np.newaxis] - offsets)
    a = _CUBIC_A
    near = ((a + 2) * distance - (a + 3)) * distance * distance + 1
    far = ((a * distance - 5 * a) * distance + 8 * a) * distance - 4 * a
    return index, np.where(distance <= 1, near, np.where(distance < 2, far, 0.0))


def _resample(pixels: np.ndarray, size: tuple[int, int], kind: str) -> np.ndarray:
    """HxWxC uint8 -> `size` (width, height) with OpenCV's filter `kind`, separably."""
    rows, row_w = _taps(pixels.shape[0], size[1], kind)
    cols, col_w = _taps(pixels.shape[1], size[0], kind)
    if kind == "bilinear":
        return _bilinear_fixed_point(pixels, rows, row_w, cols, col_w)
    # Only the source rows the taps read are converted: a large photo is never widened whole.
    tall = np.einsum("otwc,ot->owc", pixels[rows].astype(np.float32), row_w.astype(np.float32))
    wide = np.einsum("hotc,ot->hoc", tall[:, cols], col_w.astype(np.float32))
    return np.clip(np.rint(wide), 0, 255).astype(np.uint8)


def _bilinear_fixed_point(
    pixels: np.ndarray, rows: np.ndarray, row_w: np.ndarray, cols: np.ndarray, col_w: np.ndarray
) -> np.ndarray:
    """OpenCV's 8-bit INTER_LINEAR arithmetic: 11-bit weights, a horizontal pass kept in
    integers, then a vertical pass with its shifts and rounding, so that the pixels match
    OpenCV's rather than a float resize's (which round some pixels the other way)."""
    # int32 holds every sum: 255 x 2048 after the first pass, 2048 x (that >> 4) in the second.
    row_w = np.rint(row_w * _COEF_SCALE).astype(np.int32)
    col_w = np.rint(col_w * _COEF_SCALE).astype(np.int32)
    # The horizontal pass over only the source rows the vertical taps read.
    source = pixels[rows.reshape(-1)].astype(np.int32)
    wide = (
        source[:, cols[:, 0]] * col_w[np.newaxis, :, 0, np.newaxis]
        + source[:, cols[:, 1]] * col_w[np.newaxis, :, 1, np.newaxis]
    ).reshape(len(rows), 2, len(cols), pixels.shape[2])
    upper = (row_w[:, 0, np.newaxis, np.newaxis] * (wide[:, 0] >> 4)) >> 16
    lower = (row_w[:, 1, np.newaxis, np.newaxis] * (wide[:, 1] >> 4)) >> 16
    return np.clip((upper + lower + 2) >> 2, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=64)
def _affine(spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """Fold invert, scale and per-channel mean/std into one gain and offset per channel.

    ((255 - x if invert else x) * scale - mean) / std == x * gain + offset.
    """
    channels = spec.channels
    mean = np.broadcast_to(np.asarray(spec.mean, dtype=np.float64), (channels,))
    std = np.broadcast_to(np.asarray(spec.std, dtype=np.float64), (channels,))
    sign, base = (-1.0, 255.0) if spec.invert else (1.0, 0.0)
    gain = sign * spec.scale / std
    offset = (base * spec.scale - mean) / std
    if spec.color_mode == "RGB" and spec.channel_order == "BGR":
        gain, offset = gain[::-1], offset[::-1]
    shape = (channels, 1, 1) if spec.layout == "NCHW" else (channels,)
    arrays = tuple(a.astype(np.float32).reshape(shape) for a in (gain, offset))
    for array in arrays:
        array.flags.writeable = False
    return arrays[0], arrays[1]
