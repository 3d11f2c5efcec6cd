"""Bad, hostile and odd-but-legal image bytes, shared by both front ends' bad-input tests.

Each builder makes real bytes in memory: malformed files, decompression bombs (tiny files that
declare huge sizes), and legal variants of one digit image (CMYK, 16-bit, alpha, palette,
EXIF-rotated, animated) that must classify like the plain RGB version.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_declaring(width: int, height: int, idat: bytes = b"") -> bytes:
    """A gray 8-bit PNG header declaring `width` x `height`, with the given IDAT payload."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", idat or zlib.compress(b"\x00" * 64))
        + _chunk(b"IEND", b"")
    )


def gif_declaring(width: int, height: int) -> bytes:
    """A GIF whose screen and one frame declare `width` x `height` (GIF's maximum: 65535)."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00" * 6
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return screen + frame + b";"


def jpeg_declaring(width: int, height: int) -> bytes:
    """A baseline JPEG header (SOF0, one component) declaring `width` x `height`."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00\x00\x3f\x00"
    return b"\xff\xd8" + sof + sos + b"\x00" * 32 + b"\xff\xd9"


def webp_declaring(width: int, height: int) -> bytes:
    """A WebP whose VP8X header declares a `width` x `height` canvas (up to 2**24 a side)."""
    vp8x = (
        b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    )
    chunk = b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def zero_png(width: int, height: int | None = None) -> bytes:
    """A real, complete all-black gray PNG: tiny on the wire, huge decoded."""
    height = width if height is None else height
    rows = (b"\x00" * (width + 1)) * height  # filter byte 0, then the row's pixels
    return png_declaring(width, height, zlib.compress(rows, 9))


BOMBS = {
    # 10**10 pixels: beyond Pillow's own bomb limit, so refused while the header is read.
    "png 100000x100000": png_declaring(100_000, 100_000),
    "gif 65535x65535": gif_declaring(65535, 65535),
    "jpeg 65535x65535": jpeg_declaring(65535, 65535),
    "webp 100000x100000": webp_declaring(100_000, 100_000),
}


def malformed(png: bytes) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, a word the error message must hold), from one valid digit PNG."""
    image = Image.open(io.BytesIO(png)).convert("RGB").resize((280, 280))
    big_png = encode(image, "PNG")
    big_jpeg = encode(image, "JPEG", quality=90)
    gif = encode(image.convert("P"), "GIF")
    return {
        "garbage": (bytes(range(256)) * 4, "not a JPEG, PNG, WebP, BMP or GIF"),
        "truncated jpeg": (big_jpeg[: len(big_jpeg) * 2 // 3], "JPEG"),
        "truncated png": (big_png[: len(big_png) * 2 // 3], "PNG"),
        "header-only jpeg": (big_jpeg[:20], "JPEG"),
        "header-only png": (big_png[:33], "PNG"),
        "header-only gif": (gif[:13], "GIF"),
        "json as image": (b'{"image": "iVBORw0KGgo="}', "not a JPEG, PNG, WebP, BMP or GIF"),
    }


def odd_variants(digit: np.ndarray) -> dict[str, bytes]:
    """Legal encodings of one white-on-black digit that decode to (nearly) the same picture."""
    gray = Image.fromarray(digit)
    rgb = gray.convert("RGB")
    # Alpha over white gives 255 - alpha for black ink: alpha = 255 - v shows v exactly. The
    # fully transparent strokes hide red, which must never show.
    rgba = np.zeros((*digit.shape, 4), np.uint8)
    rgba[..., 3] = 255 - digit
    rgba[digit == 255, 0] = 255
    palette = gray.convert("P")
    keyed = palette.copy()
    white = [i for i, v in enumerate((palette.getpalette() or [])[::3]) if v == 255]
    keyed.info["transparency"] = white[0] if white else 255
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned left; the viewer turns it 90° clockwise to show it upright
    turned = rgb.transpose(Image.Transpose.ROTATE_90)
    other = Image.fromarray(np.ascontiguousarray(digit[::-1]))  # a different second frame
    return {
        "cmyk jpeg": encode(rgb.convert("CMYK"), "JPEG", quality=95),
        "16-bit png": encode(Image.fromarray(digit.astype(np.uint16) * 257).convert("I;16"), "PNG"),
        "rgba png with transparency": encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "palette png": encode(palette, "PNG"),
        "palette png with transparency": encode(
            keyed, "PNG", transparency=keyed.info["transparency"]
        ),
        "exif-rotated jpeg": encode(turned, "JPEG", quality=95, exif=exif.tobytes()),
        "animated gif": encode(gray, "GIF", save_all=True, append_images=[other], duration=50),
        "animated webp": encode(
            rgb, "WEBP", lossless=True, save_all=True, append_images=[other.convert("RGB")]
        ),
    }
