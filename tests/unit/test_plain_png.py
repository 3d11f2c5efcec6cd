"""The plain-PNG shortcut decodes exactly what Pillow's PNG reader decodes, or declines.

`_plain_png` answers only 8-bit grayscale or RGB, non-interlaced files made of IHDR, IDAT
and IEND; everything else goes the full way. So the property is: for any bytes, it declines
(None) or Pillow's full reader accepts them too and gives the same mode, size and pixels.
Files from Pillow's encoder first, then hand-made odd ones, then random mutations.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from runners.preprocessing import ImageLimits, _plain_png, decode_image

LIMITS = ImageLimits()


def png(image: Image.Image, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def pillow(data: bytes) -> Image.Image | None:
    """Pillow's own PNG reader, nothing of this project's in between; None if it refuses."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=("PNG",))
            image.load()
    except Exception:
        return None
    return image


def assert_same_as_pillow(data: bytes) -> bool:
    """True when the shortcut answered (then Pillow answers alike)."""
    fast = _plain_png(data, LIMITS)
    if fast is None:
        return False
    full = pillow(data)
    assert full is not None
    assert (fast.mode, fast.size) == (full.mode, full.size)
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(full))
    return True


def chunk(kind: bytes, payload: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + payload) if crc is None else crc
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def handmade(  # noqa: PLR0917 (IHDR's fields, in its order)
    width: int = 4,
    height: int = 3,
    colour: int = 0,
    depth: int = 8,
    interlace: int = 0,
    rows: bytes | None = None,
) -> bytes:
    """A PNG declaring these IHDR fields; its rows (filter byte 0 each) count up by default."""
    if rows is None:
        row = bytes(i % 256 for i in range(width * (3 if colour == 2 else 1)))
        rows = (b"\x00" + row) * height
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


RNG = np.random.default_rng(7)


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("size", [(1, 1), (28, 28), (3, 50), (64, 17), (300, 300)])
@pytest.mark.parametrize("params", [{}, {"compress_level": 0}, {"optimize": True}])
def test_encoder_output_is_taken_and_matches_pillow(
    mode: str, size: tuple[int, int], params: dict[str, Any]
) -> None:
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    pixels = RNG.integers(0, 256, shape, dtype=np.uint8)
    pixels[: size[1] // 2] = 200  # flat rows and noisy rows: every PNG row filter shows up
    data = png(Image.fromarray(pixels, mode), **params)
    assert assert_same_as_pillow(data)
    np.testing.assert_array_equal(np.asarray(decode_image(data)), pixels)


def test_several_idat_chunks_are_joined() -> None:
    data = handmade(6, 5)
    head, idat, end = data[:33], data[33:-12], data[-12:]
    payload = idat[8:-4]
    split = chunk(b"IDAT", payload[:7]) + chunk(b"IDAT", b"") + chunk(b"IDAT", payload[7:])
    assert assert_same_as_pillow(head + split + end)


def test_idat_checksum_is_not_read_as_pillow_does_not_read_it() -> None:
    data = handmade()
    broken = data[:-16] + b"\x00\x00\x00\x00" + data[-12:]  # the IDAT CRC
    assert pillow(broken) is not None
    assert assert_same_as_pillow(broken)


FRAME = Image.new("L", (4, 4), 5)


def text_chunk() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "hello")
    return png(Image.new("L", (4, 4), 9), pnginfo=info)


@pytest.mark.parametrize(
    ("what", "data"),
    [
        ("palette", png(Image.new("P", (4, 4), 1))),
        ("grayscale + alpha", png(Image.new("LA", (4, 4)))),
        ("RGBA", png(Image.new("RGBA", (4, 4)))),
        ("16-bit", png(Image.fromarray(np.full((4, 4), 999, dtype=np.uint16)))),
        ("bilevel", png(Image.new("1", (4, 4)))),
        ("interlaced", handmade(interlace=1)),
        ("2-bit grayscale", handmade(depth=2)),
        ("keyed transparency", png(Image.new("L", (4, 4), 9), transparency=9)),
        ("text", text_chunk()),
        ("dpi", png(Image.new("L", (4, 4), 9), dpi=(72, 72))),
        ("EXIF", png(Image.new("L", (4, 4), 9), exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08")),
        ("animated", png(Image.new("L", (4, 4)), save_all=True, append_images=[FRAME])),
        ("bad IHDR checksum", handmade()[:29] + b"\x00\x00\x00\x00" + handmade()[33:]),
        ("trailing bytes", handmade() + b"\x00"),
        ("no IEND", handmade()[:-12]),
        ("truncated IDAT", handmade()[:40]),
        ("too few pixels in IDAT", handmade(rows=b"\x00\x01")),
        ("not zlib", handmade()[:33] + chunk(b"IDAT", b"garbage!") + chunk(b"IEND", b"")),
        ("zero width", handmade(width=0)),
        ("over the pixel limit", handmade(5000, 4000, rows=b"")),
        ("over the side limit", handmade(13_000, 1, rows=b"")),
        ("JPEG", b"\xff\xd8\xff" + bytes(80)),
    ],
)  # fmt: skip
def test_anything_else_goes_the_full_way(what: str, data: bytes) -> None:
    assert _plain_png(data, LIMITS) is None, what


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([handmade(), handmade(9, 2, colour=2), png(Image.new("L", (5, 5), 3))]),
    st.lists(
        st.tuples(st.integers(0, 200), st.integers(0, 3), st.binary(min_size=0, max_size=3)),
        min_size=1,
        max_size=3,
    ),
)
def test_mutated_files_decode_as_pillow_decodes_them_or_not_at_all(
    data: bytes, edits: list[tuple[int, int, bytes]]
) -> None:
    for position, removed, inserted in edits:
        at = position % (len(data) + 1)
        data = data[:at] + inserted + data[at + removed :]
    assert_same_as_pillow(data)
