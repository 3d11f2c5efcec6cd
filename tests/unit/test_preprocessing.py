"""Decode-and-preprocess: formats, limits checked before decoding, modes, resizing, tensors.

Every image is built in memory; hand-written PNG chunks make tiny files that declare huge sizes.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from typing import Any, Literal

import numpy as np
import pytest
from PIL import Image

from runners.errors import EmptyInput, ImageDecodeError, ImageTooLarge, PayloadTooLarge
from runners.preprocessing import (
    ImageLimits,
    PreprocessSpec,
    _mean_and_std,
    decode_and_preprocess,
    decode_and_preprocess_many,
    decode_image,
    preprocess_image,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def handmade_png(width: int, height: int, idat: bytes | None, end: bool = True) -> bytes:
    """An 8-bit grayscale PNG with the given IHDR size and raw IDAT payload."""
    data = b"\x89PNG\r\n\x1a\n" + chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    )
    if idat is not None:
        data += chunk(b"IDAT", idat)
    return data + chunk(b"IEND", b"") if end else data


def quadrants(width: int = 48, height: int = 32) -> np.ndarray:
    """Four flat colours, one per quadrant: orientation and channel mistakes show at once."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[: height // 2, : width // 2] = RED
    pixels[: height // 2, width // 2 :] = GREEN
    pixels[height // 2 :, : width // 2] = BLUE
    pixels[height // 2 :, width // 2 :] = WHITE
    return pixels


def raw_spec(
    height: int, width: int, color_mode: Literal["L", "RGB"] = "RGB", **fields: Any
) -> PreprocessSpec:
    """HWC output in 0..255, so expected values read as pixels."""
    fields.setdefault("layout", "NHWC")
    fields.setdefault("scale", 1.0)
    return PreprocessSpec(height=height, width=width, color_mode=color_mode, **fields)


def pixels_of(data: bytes, height: int, width: int, **fields: Any) -> np.ndarray:
    return decode_and_preprocess(data, raw_spec(height, width, **fields))


# --- formats -------------------------------------------------------------------------------


# Lossy codecs blur the edges between quadrants: judged on mean error overall and on the worst
# pixel inside the red quadrant. A channel or orientation mistake costs about 100 levels.
@pytest.mark.parametrize(
    ("fmt", "params", "mean_error", "worst_inside"),
    [
        ("PNG", {}, 0, 0),
        ("BMP", {}, 0, 0),
        ("GIF", {}, 0, 0),
        ("WEBP", {"lossless": True}, 0, 0),
        ("WEBP", {"quality": 90}, 6, 12),
        ("JPEG", {"quality": 95}, 6, 12),
    ],
)
def test_each_format_decodes_to_its_pixels(
    fmt: str, params: dict[str, Any], mean_error: float, worst_inside: float
) -> None:
    expected = quadrants()
    out = pixels_of(encode(Image.fromarray(expected), fmt, **params), 32, 48)
    assert out.shape == (32, 48, 3)
    assert np.abs(out - expected).mean() <= mean_error
    assert np.abs(out - expected)[4:12, 4:20].max() <= worst_inside


@pytest.mark.parametrize(
    ("fmt", "params"), [("GIF", {}), ("PNG", {}), ("WEBP", {"lossless": True})]
)
def test_animation_yields_its_first_frame(fmt: str, params: dict[str, Any]) -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **params)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3  # really animated
    np.testing.assert_array_equal(pixels_of(data, 8, 8), np.full((8, 8, 3), RED))


# --- orientation, JPEG draft -----------------------------------------------------------------


def test_exif_orientation_is_applied() -> None:
    upright = Image.fromarray(quadrants(48, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": store the image turned the other way
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    rotated = pixels_of(encode(stored, "JPEG", quality=95, exif=exif.tobytes()), 32, 48)
    plain = pixels_of(encode(upright, "JPEG", quality=95), 32, 48)
    assert np.abs(rotated - plain).mean() < 3


def test_large_jpeg_decodes_at_reduced_scale_close_to_full_decode() -> None:
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (40, 80, 3), dtype=np.uint8)).resize((1600, 800))
    data = encode(photo, "JPEG", quality=90)
    spec = PreprocessSpec(height=50, width=100, color_mode="RGB")
    drafted = decode_image(data, spec=spec)
    assert drafted.size == (200, 100)  # 1/8 scale still leaves twice the 100x50 target
    full = decode_image(data)
    assert full.size == (1600, 800)
    difference = preprocess_image(drafted, spec) - preprocess_image(full, spec)
    assert np.abs(difference).mean() < 3 / 255


def test_reduced_scale_decode_accounts_for_exif_rotation() -> None:
    stored = Image.new("RGB", (800, 1600), RED)  # displayed as 1600 wide, 800 high
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", exif=exif.tobytes())
    image = decode_image(data, spec=PreprocessSpec(height=100, width=400, color_mode="RGB"))
    # Sized for the upright 400x100 target: 1/2 scale (800x400 >= 2 x target), not 1/8.
    assert image.size == (800, 400)


# --- modes -----------------------------------------------------------------------------------


def test_transparent_pixels_composite_on_white_not_their_hidden_colour() -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # transparent black everywhere
    rgba[0, 0] = (*RED, 255)
    rgba[0, 1] = (0, 0, 0, 128)  # half-transparent black over white
    out = pixels_of(encode(Image.fromarray(rgba), "PNG"), 4, 4)
    np.testing.assert_array_equal(out[0, 0], RED)
    np.testing.assert_allclose(out[0, 1], (127, 127, 127), atol=1)
    np.testing.assert_array_equal(out[1:], np.full((3, 4, 3), 255))


def test_grayscale_with_alpha_composites_on_white() -> None:
    la = Image.merge("LA", (Image.new("L", (4, 4), 0), Image.new("L", (4, 4), 0)))
    np.testing.assert_array_equal(
        pixels_of(encode(la, "PNG"), 4, 4, color_mode="L"), np.full((4, 4, 1), 255)
    )


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_composites_on_white(fmt: str) -> None:
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, *RED] + [0] * 762)  # index 0 black (transparent), 1 red
    palette.putpixel((0, 0), 1)
    out = pixels_of(encode(palette, fmt, transparency=0), 4, 4)
    np.testing.assert_array_equal(out[0, 0], RED)
    np.testing.assert_array_equal(out[3, 3], WHITE)


def test_palette_without_transparency_keeps_its_colours() -> None:
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, *BLUE] + [0] * 762)
    np.testing.assert_array_equal(pixels_of(encode(palette, "PNG"), 4, 4)[2, 2], BLUE)


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red ink-wise
    out = pixels_of(encode(cmyk, "JPEG", quality=95), 16, 16)
    np.testing.assert_allclose(out[8, 8], RED, atol=4)


def test_16_bit_png_scales_to_the_8_bit_values() -> None:
    rng = np.random.default_rng(1)
    eight = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    noise = rng.integers(-128, 129, (16, 16))  # below half a level: rounds back to `eight`
    sixteen = np.clip(eight.astype(np.int64) * 257 + noise, 0, 65535).astype(np.uint16)
    data = encode(Image.fromarray(sixteen), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = pixels_of(data, 16, 16, color_mode="L")[:, :, 0]
    assert np.abs(out - eight).max() <= 1  # clipping to 8 bits would give 255 almost everywhere


def test_bilevel_becomes_0_and_255() -> None:
    bilevel = Image.new("1", (4, 4), 0)
    bilevel.putpixel((1, 1), 1)
    out = pixels_of(encode(bilevel, "PNG"), 4, 4, color_mode="L")[:, :, 0]
    expected = np.zeros((4, 4))
    expected[1, 1] = 255
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    ("mode", "value", "gray", "tolerance"),
    [
        ("I;16", 128 * 257, 128, 0),
        ("I;16B", 128 * 257, 128, 0),
        ("I", 128 * 257, 128, 0),
        ("I", 70_000, 255, 0),  # beyond the 16-bit range: clipped there, not wrapped
        ("I", -5, 0, 0),
        ("F", 127.6, 128, 0),
        ("F", 300.0, 255, 0),
        ("F", -3.0, 0, 0),
        ("1", 1, 255, 0),
        ("LA", (128, 0), 255, 0),  # transparent mid-gray: white shows
        ("LA", (128, 255), 128, 0),
        ("RGBA", (0, 0, 0, 0), 255, 0),
        ("RGBa", (0, 0, 0, 0), 255, 0),
        ("PA", (0, 0), 255, 0),
        ("CMYK", (0, 0, 0, 127), 128, 0),
        ("YCbCr", (128, 128, 128), 128, 1),
        ("HSV", (0, 0, 128), 128, 0),
        ("LAB", (255, 128, 128), 255, 2),
    ],
)
def test_every_mode_converts_to_8_bit_rgb(mode: str, value: Any, gray: int, tolerance: int) -> None:
    out = preprocess_image(Image.new(mode, (4, 4), value), raw_spec(4, 4))
    np.testing.assert_allclose(out, np.full((4, 4, 3), gray), atol=tolerance)


def test_color_and_gray_convert_between_each_other() -> None:
    data = encode(Image.new("RGB", (4, 4), (200, 100, 50)), "PNG")
    luma = 200 * 0.299 + 100 * 0.587 + 50 * 0.114  # ITU-R 601, Pillow's L
    assert abs(pixels_of(data, 4, 4, color_mode="L")[0, 0, 0] - luma) <= 1
    gray = encode(Image.new("L", (4, 4), 77), "PNG")
    np.testing.assert_array_equal(pixels_of(gray, 4, 4)[0, 0], (77, 77, 77))


# --- errors and limits -----------------------------------------------------------------------


def test_empty_bytes_are_empty_input() -> None:
    with pytest.raises(EmptyInput, match="empty"):
        decode_and_preprocess(b"", raw_spec(4, 4))


@pytest.mark.parametrize(
    "data",
    [b"definitely not an image", b"II*\x00" + bytes(64)],
    ids=["garbage", "tiff-magic"],
)
def test_unrecognised_bytes_fail_naming_the_formats(data: bytes) -> None:
    with pytest.raises(ImageDecodeError, match="not a JPEG, PNG, WebP, BMP or GIF image"):
        decode_and_preprocess(data, raw_spec(4, 4))


def test_supported_pillow_format_outside_the_list_is_refused() -> None:
    tiff = encode(Image.new("RGB", (4, 4), RED), "TIFF")
    assert Image.open(io.BytesIO(tiff)).format == "TIFF"  # Pillow itself would decode it
    with pytest.raises(ImageDecodeError, match="not a JPEG"):
        decode_and_preprocess(tiff, raw_spec(4, 4))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
def test_truncated_images_fail(fmt: str) -> None:
    rng = np.random.default_rng(2)
    data = encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), fmt)
    with pytest.raises(ImageDecodeError, match=r"(?i)truncated|corrupt"):
        decode_and_preprocess(data[: len(data) // 2], raw_spec(4, 4))


@pytest.mark.parametrize("end", [False, True], ids=["ihdr-only", "ihdr-iend"])
def test_header_only_png_fails(end: bool) -> None:
    with pytest.raises(ImageDecodeError, match="PNG"):
        decode_and_preprocess(handmade_png(16, 16, None, end=end), raw_spec(4, 4))


@pytest.mark.parametrize("side", [100_000, 12_000], ids=["beyond-pillow-error", "pillow-warning"])
def test_tiny_png_declaring_a_huge_size_is_too_large(
    side: int, recwarn: pytest.WarningsRecorder
) -> None:
    data = handmade_png(side, side, zlib.compress(b"\x00" * 17))
    assert len(data) < 100
    with pytest.raises(ImageTooLarge) as caught:
        decode_and_preprocess(data, raw_spec(4, 4))
    assert str(side * side) in caught.value.message
    assert "16000000" in caught.value.message
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_bomb_warning_is_refused_even_when_warnings_are_errors() -> None:
    data = handmade_png(12_000, 12_000, zlib.compress(b"\x00" * 17))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageTooLarge):
            decode_and_preprocess(data, raw_spec(4, 4))


@pytest.fixture(scope="module")
def zero_png_9000() -> bytes:
    """A valid all-black 9000x9000 PNG (81 Mpx, within Pillow's own limit), ~80 KB."""
    compressor = zlib.compressobj(9)
    row = bytes(9001)  # filter byte + 9000 pixels
    idat = b"".join(compressor.compress(row) for _ in range(9000)) + compressor.flush()
    return handmade_png(9000, 9000, idat)


def test_9000_square_png_is_refused_by_the_pixel_limit(zero_png_9000: bytes) -> None:
    assert len(zero_png_9000) < 200_000
    with pytest.raises(ImageTooLarge) as caught:
        decode_and_preprocess(zero_png_9000, raw_spec(4, 4))
    assert "9000x9000" in caught.value.message
    assert "81000000" in caught.value.message
    assert "16000000" in caught.value.message


def test_size_is_refused_before_any_pixel_is_decoded() -> None:
    # Undecodable pixel data: only a refusal from the header can give ImageTooLarge here.
    corrupt = b"these bytes are not zlib data"
    with pytest.raises(ImageDecodeError):
        decode_and_preprocess(handmade_png(16, 16, corrupt), raw_spec(4, 4))
    with pytest.raises(ImageTooLarge):
        decode_and_preprocess(handmade_png(9000, 9000, corrupt), raw_spec(4, 4))


def test_a_side_beyond_max_side_is_too_large() -> None:
    data = encode(Image.new("L", (50, 2)), "PNG")
    with pytest.raises(ImageTooLarge) as caught:
        decode_and_preprocess(data, raw_spec(4, 4), ImageLimits(max_side=40))
    assert "50x2" in caught.value.message
    assert "40 pixels per side" in caught.value.message


def test_bytes_over_the_limit_are_refused_before_parsing() -> None:
    # Garbage would be ImageDecodeError if parsed: the byte limit must come first.
    with pytest.raises(PayloadTooLarge) as caught:
        decode_and_preprocess(b"x" * 101, raw_spec(4, 4), ImageLimits(max_bytes=100))
    assert type(caught.value) is PayloadTooLarge
    assert "101 bytes" in caught.value.message
    assert "100 bytes" in caught.value.message


# --- resizing --------------------------------------------------------------------------------


def test_matching_size_keeps_pixels_exactly() -> None:
    digit = np.random.default_rng(3).integers(0, 256, (28, 28), dtype=np.uint8)
    out = pixels_of(encode(Image.fromarray(digit), "PNG"), 28, 28, color_mode="L")
    np.testing.assert_array_equal(out[:, :, 0], digit)


def test_stretch_ignores_aspect() -> None:
    out = pixels_of(encode(Image.fromarray(quadrants(48, 32)), "PNG"), 10, 20)
    assert out.shape == (10, 20, 3)
    np.testing.assert_allclose(out[0, 0], RED, atol=1)
    np.testing.assert_allclose(out[-1, -1], WHITE, atol=1)


def test_shorter_side_then_center_crop() -> None:
    pixels = np.zeros((32, 64, 3), dtype=np.uint8)
    pixels[:, :16], pixels[:, 16:48], pixels[:, 48:] = RED, GREEN, BLUE
    data = encode(Image.fromarray(pixels), "PNG")
    # Shorter side already 32 = max(32, 32): no resize, the middle 32 columns are all green.
    same = pixels_of(data, 32, 32, resize="shorter_side")
    np.testing.assert_array_equal(same, np.full((32, 32, 3), GREEN))
    # 64x32 -> 32x16, middle 16x16; bilinear antialiasing blends only the outer columns.
    half = pixels_of(data, 16, 16, resize="shorter_side", resize_shorter_to=16)
    assert half.shape == (16, 16, 3)
    np.testing.assert_array_equal(half[:, 2:-2], np.full((16, 12, 3), GREEN))
    assert half[:, 0, 0].max() < 64 and half[:, -1, 2].max() < 64  # little red or blue


def test_shorter_side_without_crop_stretches_to_the_exact_size() -> None:
    data = encode(Image.fromarray(quadrants(48, 32)), "PNG")
    out = pixels_of(data, 16, 16, resize="shorter_side", crop="none", resize_shorter_to=16)
    np.testing.assert_array_equal(out, pixels_of(data, 16, 16))  # the whole picture, squeezed


def test_letterbox_pads_with_pad_value_centered() -> None:
    data = encode(Image.new("L", (40, 20), 255), "PNG")
    out = pixels_of(data, 28, 28, color_mode="L", resize="letterbox", pad_value=7)[:, :, 0]
    # 40x20 fits as 28x14, centred: 7 padding rows above and below.
    assert (out[:7] == 7).all()
    assert (out[21:] == 7).all()
    np.testing.assert_allclose(out[7:21], 255, atol=1)
    tall = pixels_of(data, 10, 40, color_mode="RGB", resize="letterbox", pad_value=3)
    assert tall.shape == (10, 40, 3)
    assert (tall[:, :10] == 3).all() and (tall[:, 30:] == 3).all()  # 20x10 centred in 40


# --- tensor ----------------------------------------------------------------------------------


def test_layouts_hold_the_same_values() -> None:
    data = encode(Image.fromarray(quadrants(48, 32)), "PNG")
    nchw = decode_and_preprocess(data, PreprocessSpec(height=32, width=48, color_mode="RGB"))
    nhwc = decode_and_preprocess(
        data, PreprocessSpec(height=32, width=48, color_mode="RGB", layout="NHWC")
    )
    assert nchw.shape == (3, 32, 48) and nhwc.shape == (32, 48, 3)
    for sample in (nchw, nhwc):
        assert sample.dtype == np.float32 and sample.flags.c_contiguous
    np.testing.assert_array_equal(nchw.transpose(1, 2, 0), nhwc)
    np.testing.assert_array_equal(nchw[:, 0, 0], (1.0, 0.0, 0.0))  # red: scale 1/255


def test_bgr_reverses_channels_after_normalising_in_rgb_order() -> None:
    data = encode(Image.new("RGB", (2, 2), RED), "PNG")
    fields: dict[str, Any] = {"mean": (0.1, 0.2, 0.3), "std": (0.5, 0.25, 0.1), "scale": 1 / 255}
    rgb = pixels_of(data, 2, 2, **fields)
    bgr = pixels_of(data, 2, 2, channel_order="BGR", **fields)
    np.testing.assert_allclose(rgb[0, 0], ((1 - 0.1) / 0.5, -0.2 / 0.25, -0.3 / 0.1), rtol=1e-6)
    np.testing.assert_array_equal(bgr, rgb[:, :, ::-1])
    nchw = decode_and_preprocess(
        data, PreprocessSpec(height=2, width=2, color_mode="RGB", channel_order="BGR", **fields)
    )
    np.testing.assert_array_equal(nchw.transpose(1, 2, 0), bgr)


def test_mean_std_normalisation() -> None:
    data = encode(Image.new("RGB", (2, 2), (51, 51, 51)), "PNG")  # 0.2 after scale
    spec = raw_spec(2, 2, scale=1 / 255, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.1))
    np.testing.assert_allclose(decode_and_preprocess(data, spec)[1, 1], (0.2, 0.0, -1.0), atol=1e-6)
    one_value = raw_spec(2, 2, scale=1 / 255, mean=(0.1,), std=(0.5,))
    np.testing.assert_allclose(decode_and_preprocess(data, one_value), 0.2, atol=1e-6)


def test_invert_comes_before_scale_and_normalisation() -> None:
    pixels = np.array([[0, 255], [51, 204]], dtype=np.uint8)
    data = encode(Image.fromarray(pixels), "PNG")
    spec = PreprocessSpec(
        height=2, width=2, color_mode="L", invert=True, mean=(0.1307,), std=(0.3081,)
    )
    expected = ((255 - pixels.astype(np.float64)) / 255 - 0.1307) / 0.3081
    np.testing.assert_allclose(decode_and_preprocess(data, spec)[0], expected, rtol=1e-5)
    plain = pixels_of(data, 2, 2, color_mode="L", invert=True)[:, :, 0]
    np.testing.assert_array_equal(plain, 255 - pixels.astype(np.float32))


# --- the images of one request ---------------------------------------------------------------


def test_many_images_decode_as_one_each_and_fail_in_their_own_slots() -> None:
    spec = PreprocessSpec(height=8, width=8, color_mode="L", mean=(0.5,), std=(0.25,))
    good = [
        encode(Image.new("L", (8, 8), 30), "PNG"),  # plain PNG
        encode(Image.fromarray(quadrants(8, 8)), "JPEG", quality=90),
        encode(Image.new("RGBA", (16, 4), (9, 99, 199, 128)), "PNG"),  # resized, alpha
    ]
    images = [good[0], b"", good[1], b"not an image", good[2]]
    batch, failures = decode_and_preprocess_many(images, spec, ImageLimits())
    assert batch.shape == (3, 1, 8, 8) and batch.dtype == np.float32 and batch.flags.c_contiguous
    for sample, data in zip(batch, good, strict=True):
        np.testing.assert_array_equal(sample, decode_and_preprocess(data, spec))
    assert [type(f).__name__ if f else None for f in failures] == [
        None, "EmptyInput", None, "ImageDecodeError", None,
    ]  # fmt: skip
    empty, none = decode_and_preprocess_many([b"x"], spec)
    assert empty.shape == (0, 1, 8, 8) and isinstance(none[0], ImageDecodeError)


@pytest.mark.parametrize(
    "pixels",
    [
        np.random.default_rng(3).integers(0, 256, (3, 224, 224), dtype=np.uint8),
        np.full((3, 1000, 1000), 255, dtype=np.uint8),  # the largest squares, many of them
        np.zeros((1, 28, 28), dtype=np.uint8),
    ],
    ids=["noise", "white", "black"],
)
def test_the_logged_pixel_statistics_are_numpys(pixels: np.ndarray) -> None:
    mean, std = _mean_and_std(pixels)
    assert mean == pytest.approx(float(pixels.mean()), abs=1e-9)
    assert std == pytest.approx(float(pixels.std()), abs=1e-6)
