"""atheris fuzz target for decode-and-preprocess: only typed errors, within time and memory.

    python -m tests.fuzz.fuzz_preprocessing --seconds 600      # make fuzz
    python -m tests.fuzz.fuzz_preprocessing --seconds 20 --artifacts DIR -- -runs=100

The property: `decode_and_preprocess` on any bytes either returns a finite float32 sample of
the spec's shape or raises a `ServingError` subclass (which a front end answers as a 4xx).
Any other exception is a crash; libFuzzer's -timeout and -rss_limit_mb turn a slow or
memory-hungry input into one too. A crash is written as `crash-*`, `timeout-*` or `oom-*`
under --artifacts, and the exit status is non-zero.

The seed corpus (small valid images of every accepted format and mode, an EXIF-rotated
JPEG, animated GIF and WebP, a file declaring a huge size) is generated at start, so the
fuzzer mutates real structure instead of searching for magic numbers. Pillow's pure-Python
format plugins and `runners` are instrumented for coverage; its C decoders are not.

It lives under tests/ because it is a test of the product (the CI run is
tests/fuzz/test_fuzz_preprocessing.py), not a tool a user of the service needs.
"""

from __future__ import annotations

import argparse
import io
import struct
import sys
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["PIL", "runners"]):
    import numpy as np
    from PIL import (
        BmpImagePlugin,  # noqa: F401 (imported here so that it is instrumented)
        GifImagePlugin,  # noqa: F401
        Image,
        ImageOps,  # noqa: F401
        JpegImagePlugin,  # noqa: F401
        PngImagePlugin,  # noqa: F401
        TiffImagePlugin,  # noqa: F401 (EXIF blocks are parsed as TIFF)
        WebPImagePlugin,  # noqa: F401
    )

    from runners.errors import ServingError
    from runners.preprocessing import ImageLimits, PreprocessSpec, decode_and_preprocess

# Limits a test server uses (tests/integration/conftest.py TEST_LIMITS): small enough that an
# input the limits let through decodes well inside the time and memory bounds below.
LIMITS = ImageLimits(max_bytes=256 * 1024, max_pixels=1_000_000, max_side=2_000)
# The preprocessing paths the model repository uses: grayscale stretch with inversion (digits),
# RGB shorter-side resize and centre crop (ImageNet-style), letterbox into BGR NHWC, and the
# OpenCV-style filters.
SPECS = (
    PreprocessSpec(height=28, width=28, color_mode="L", invert=True),
    PreprocessSpec(
        height=32,
        width=32,
        color_mode="RGB",
        resize="shorter_side",
        resize_shorter_to=36,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    ),
    PreprocessSpec(
        height=24,
        width=40,
        color_mode="RGB",
        channel_order="BGR",
        layout="NHWC",
        resize="letterbox",
        pad_value=114,
    ),
    # A text recogniser's: height kept, padded on the right in tensor units, OpenCV's bilinear.
    PreprocessSpec(
        height=16,
        width=64,
        color_mode="RGB",
        channel_order="BGR",
        mean=(0.5,),
        std=(0.5,),
        resize="fit_height",
        resample="bilinear",
        pad_anchor="top_left",
        pad_tensor_value=0.0,
    ),
    PreprocessSpec(height=20, width=20, color_mode="L", resample="bicubic"),
)
# libFuzzer's own bounds per input: seconds, and resident memory of the whole process.
TIMEOUT_S = 10
RSS_LIMIT_MB = 1024
MAX_LEN = 64 * 1024


def test_one_input(data: bytes) -> None:
    """The property. The spec is chosen by length, so every input keeps its own bytes whole."""
    spec = SPECS[len(data) % len(SPECS)]
    try:
        sample = decode_and_preprocess(data, spec, LIMITS)
    except ServingError:
        return
    if sample.shape != spec.sample_shape or sample.dtype != np.float32:
        raise AssertionError(f"sample {sample.shape} {sample.dtype}, spec {spec.sample_shape}")
    if not np.isfinite(sample).all():
        raise AssertionError("sample holds NaN or infinity")


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A valid-looking PNG header that declares `width` x `height` and carries one IDAT."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def seeds() -> dict[str, bytes]:
    """Small valid files of every format and mode decode-and-preprocess accepts, and a few more."""
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), "RGB")
    rgba = Image.fromarray(rng.integers(0, 256, (12, 16, 4), dtype=np.uint8), "RGBA")
    gray = rgb.convert("L")
    palette = rgb.quantize(16)
    sixteen = Image.fromarray(rng.integers(0, 65536, (12, 16), dtype=np.uint16))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated a quarter turn
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    made: dict[str, Callable[[], bytes]] = {
        "png_rgb": lambda: _encode(rgb, "PNG"),
        "png_rgba": lambda: _encode(rgba, "PNG"),
        "png_l": lambda: _encode(gray, "PNG"),
        "png_la": lambda: _encode(rgba.convert("LA"), "PNG"),
        "png_p_transparent": lambda: _encode(palette, "PNG", transparency=0),
        "png_1bit": lambda: _encode(gray.convert("1"), "PNG"),
        "png_16bit": lambda: _encode(sixteen, "PNG"),
        "png_interlaced": lambda: _encode(rgb, "PNG", optimize=False, interlace=1),
        "png_declares_huge": lambda: _png_declaring(100_000, 100_000),
        "jpeg_rgb": lambda: _encode(rgb, "JPEG", quality=80),
        "jpeg_l": lambda: _encode(gray, "JPEG"),
        "jpeg_cmyk": lambda: _encode(rgb.convert("CMYK"), "JPEG"),
        "jpeg_progressive": lambda: _encode(rgb, "JPEG", progressive=True),
        "jpeg_exif_rotated": lambda: _encode(rgb, "JPEG", exif=exif.tobytes()),
        "gif": lambda: _encode(palette, "GIF"),
        "gif_transparent": lambda: _encode(palette, "GIF", transparency=3),
        "gif_animated": lambda: _encode(
            frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50
        ),
        "webp_lossy": lambda: _encode(rgb, "WEBP", quality=70),
        "webp_lossless_rgba": lambda: _encode(rgba, "WEBP", lossless=True),
        "webp_animated": lambda: _encode(
            frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50
        ),
        "bmp_rgb": lambda: _encode(rgb, "BMP"),
        "bmp_p": lambda: _encode(palette, "BMP"),
        "bmp_1bit": lambda: _encode(gray.convert("1"), "BMP"),
        # Not accepted: refused with a typed error, and a start for the fuzzer all the same.
        "tiff_rgb": lambda: _encode(rgb, "TIFF"),
    }
    return {name: make() for name, make in made.items()}


def write_seeds(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    found = seeds()
    for name, data in found.items():
        (folder / name).write_bytes(data)
    return len(found)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument("--seconds", type=int, default=600, help="Campaign length.")
    parser.add_argument(
        "--corpus", type=Path, help="Corpus folder, kept between runs (default: a temp folder)."
    )
    parser.add_argument(
        "--artifacts", type=Path, default=Path("."), help="Where crash-/timeout-/oom- files go."
    )
    args, libfuzzer = parser.parse_known_args(argv[1:])
    libfuzzer = [a for a in libfuzzer if a != "--"]
    with tempfile.TemporaryDirectory(prefix="fuzz_corpus_") as scratch:
        corpus = args.corpus or Path(scratch)
        write_seeds(corpus)
        args.artifacts.mkdir(parents=True, exist_ok=True)
        flags = [
            f"-max_total_time={args.seconds}",
            f"-timeout={TIMEOUT_S}",
            f"-rss_limit_mb={RSS_LIMIT_MB}",
            f"-max_len={MAX_LEN}",
            f"-artifact_prefix={args.artifacts.resolve()}/",
            "-print_final_stats=1",
            *libfuzzer,
            str(corpus),
        ]
        atheris.Setup([argv[0], *flags], test_one_input)
        atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
