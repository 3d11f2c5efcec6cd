"""The fast multipart split: where it answers, it answers as Starlette's parser does.

`_split_multipart` takes the plainly well-formed bodies and declines (None) everything else,
which then goes to Starlette's parser. So the property is: for any body, the split declines,
or Starlette's parser accepts the body and finds the same file parts, in the same order,
with the same bytes. Hand-made odd bodies first, then random mutations of a good one.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers

from runners.errors import ServingError
from serving.bodies import _parse_multipart, _split_multipart

BOUNDARY = "b0a1"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) + b"\r\n-\r\n--b0a\r\n"  # CR, LF, near-delimiters


def part(
    data: bytes, name: str = "images", filename: str | None = "0.png", extra: str = ""
) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    return (
        (
            f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n{extra}"
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + b"\r\n"
    )


def body(*parts: bytes, end: bytes = b"\r\n") -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--".encode() + end


def starlette(content_type: str, data: bytes, max_images: int) -> list[tuple[str, bytes]] | None:
    headers = Headers({"content-type": content_type})
    try:
        return asyncio.run(_parse_multipart(headers, data, max_images))
    except ServingError:
        return None


def assert_same(content_type: str, data: bytes, max_images: int = 64) -> bool:
    """True when the split answered (then it agrees with Starlette's parser)."""
    fast = _split_multipart(content_type, data, max_images)
    if fast is None:
        return False
    assert fast == starlette(content_type, data, max_images)
    return True


def test_what_clients_send_is_split_as_starlette_parses_it() -> None:
    data = body(*(part(PNG[: 40 + i], filename=f"{i}.png") for i in range(16)))
    assert assert_same(CONTENT_TYPE, data)
    assert len(_split_multipart(CONTENT_TYPE, data, 64) or []) == 16
    # Browsers and httpx: quoted boundary, no trailing CRLF, header case, extra headers.
    quoted = f'multipart/form-data; boundary="{BOUNDARY}"'
    assert assert_same(quoted, body(part(PNG), end=b""))
    lower = part(PNG).replace(b"Content-Disposition", b"content-disposition")
    assert assert_same(CONTENT_TYPE, body(lower, part(b"", extra="X-Note: a\n b\r\n")))
    named = body(part(PNG, name="image"), part(PNG, "\xe9t\xe9"), part(PNG, 'a\\"b'))
    assert assert_same(CONTENT_TYPE, named)  # names are judged later, by the caller


@pytest.mark.parametrize(
    ("what", "data"),
    [
        ("preamble", b"hello\r\n" + body(part(PNG))),
        ("leading CRLF", b"\r\n" + body(part(PNG))),
        ("epilogue", body(part(PNG), end=b"\r\nbye")),
        ("no closing boundary", part(PNG)),
        ("truncated", body(part(PNG))[:-9]),
        ("padding after a boundary", body(part(PNG)).replace(b"b0a1\r\n", b"b0a1 \r\n", 1)),
        ("LF line ends", body(part(PNG)).replace(b"\r\n", b"\n")),
        ("text field", body(part(b"hi", "note", None), part(PNG))),
        ("no name", body(part(PNG).replace(b'name="images"; ', b""))),
        ("no headers", f"--{BOUNDARY}\r\n\r\n".encode() + PNG + body(b"")),
        ("no disposition", body(part(PNG).replace(b"Content-Disposition", b"X-Other"))),
        ("bad header name", body(part(PNG, extra="Bad Name: x\r\n"))),
        ("header without colon", body(part(PNG, extra="nocolon\r\n"))),
        ("lone CR in a header", body(part(PNG, extra="X-A: a\rb\r\n"))),
        ("nine headers", body(part(PNG, extra="X-A: 1\r\n" * 7))),
        ("delimiter inside data", body(part(PNG + f"\r\n--{BOUNDARY}x".encode()))),
        ("half delimiter inside data", body(part(PNG + f"\r\n--{BOUNDARY}\rx".encode()))),
        ("closing delimiter twice", body(part(PNG)) + body(part(PNG))),
        ("too many files", body(*(part(PNG) for _ in range(65)))),
        ("non-UTF-8 name", body(part(PNG).replace(b'name="images"', b'name="\xe9"'))),
    ],
)
def test_odd_bodies_are_left_to_starlette(what: str, data: bytes) -> None:
    assert not assert_same(CONTENT_TYPE, data), what


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data",
        "multipart/form-data; boundary=",
        f"multipart/form-data; boundary={BOUNDARY}; charset=utf-16",
        f"multipart/form-data; boundary={'x' * 257}",
    ],
)
def test_odd_content_types_are_left_to_starlette(content_type: str) -> None:
    assert not assert_same(content_type, body(part(PNG)))


TOKENS = [b"\r\n", b"\r", b"\n", b"--", b"-", BOUNDARY.encode(), b":", b" ", b"\t", b'"', b";",
          b"=", b"name", b"filename", b"\x00", b"\xe9", b"images"]  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 3), st.sampled_from(TOKENS)),
        min_size=1,
        max_size=4,
    ),
    st.integers(1, 3),
)
def test_mutated_bodies_split_as_starlette_parses_them_or_not_at_all(
    edits: list[tuple[int, int, bytes]], max_images: int
) -> None:
    data = body(part(b"ab\r\n--b0\r\n"), part(b"", name="x", filename="1"))
    for position, removed, token in edits:
        at = position % (len(data) + 1)
        data = data[:at] + token + data[at + removed :]
    assert_same(CONTENT_TYPE, data, max_images)
