"""Request bodies: read under a byte cap, then split into encoded images.

BentoML puts no cap on a body, so the cap is enforced here before the whole body is held:
a declared Content-Length beyond it is refused unread, and a streamed body is refused as
soon as it crosses it. Two forms carry images: the raw image as the body
(`Content-Type: image/png`, `image/jpeg`, ... or `application/octet-stream`), and a
`multipart/form-data` upload with one file part per image.

A multipart body is split by `_split_multipart` when it is plainly well formed (what every
client library sends), and by Starlette's parser otherwise, which then decides (and words the
error). Starlette's parser costs about as much per part as decoding a digit (python-multipart's
byte state machine, a spooled temporary file per file part).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator

from python_multipart.multipart import parse_options_header
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from runners.errors import BadInput, EmptyInput, PayloadTooLarge, UnsupportedMediaType

RAW_MEDIA_TYPES = (
    "image/png",
    "image/jpeg",
    "image/webp",
    "image/bmp",
    "image/gif",
    "application/octet-stream",
)
MULTIPART = "multipart/form-data"
ACCEPTED = ", ".join((*RAW_MEDIA_TYPES, MULTIPART))
_MAX_TEXT_FIELDS = 16
# An unread body up to this size is read and dropped, keeping the connection alive.
_DISCARD_MAX_BYTES = 64 * 1024
# python-multipart's own limits (DEFAULT_MAX_HEADER_COUNT, _SIZE, MAX_BOUNDARY_LENGTH): the
# fast split stays well inside them and leaves anything near them to the full parser.
_MAX_PART_HEADERS = 8
_MAX_HEADER_LINE = 4096
_MAX_BOUNDARY = 256
# Header names are RFC 9110 tokens, as python-multipart checks them.
_TOKEN = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~"


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(
            f"the body is {declared} bytes; the limit is {max_bytes} bytes (max_body_bytes)"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(
                f"the body exceeds the limit of {max_bytes} bytes (max_body_bytes)"
            )
        chunks.append(chunk)
    request.state.body_read = True
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def body_left_unread(request: Request) -> bool:
    """True when the request carries a large or unbounded body that was not wholly read.

    An answer sent then closes the connection: otherwise the HTTP server goes on reading and
    discarding the rest (a chunked upload of any size) just to keep the connection alive. A
    small body is cheaper to discard than a reconnect, so a 429 under overload stays cheap.
    """
    if getattr(request.state, "body_read", False):
        return False
    if "transfer-encoding" in request.headers:
        return True
    declared = request.headers.get("content-length", "0")
    return not declared.isdigit() or int(declared) > _DISCARD_MAX_BYTES


async def read_images(request: Request, max_bytes: int, max_images: int, field: str) -> list[bytes]:
    """Encoded images in the order the request carries them; never more than `max_images`.

    A multipart body carries them as file parts named `field`; a file part under any other
    name is refused rather than silently taken or dropped.
    """
    kind = media_type(request)
    if kind == MULTIPART:
        body = await read_body(request, max_bytes)
        images = await _multipart_files(request.headers, body, max_images, field)
    elif kind.startswith("image/") or kind == "application/octet-stream":
        images = [await read_body(request, max_bytes)]
    else:
        raise UnsupportedMediaType(
            f"Content-Type {kind or '(none)'!r} is not accepted; send one of: {ACCEPTED}"
        )
    # An empty image is refused by the decoder: on its own as a 400, in a batch in its slot.
    return images


async def _multipart_files(
    headers: Headers, body: bytes, max_images: int, field: str
) -> list[bytes]:
    parts = _split_multipart(headers.get("content-type", ""), body, max_images)
    if parts is None:
        parts = await _parse_multipart(headers, body, max_images)
    files = []
    for name, data in parts:
        if name != field:
            raise BadInput(
                f"the multipart body has a file part named {name[:64]!r}; this endpoint "
                f"reads file parts named {field!r}"
            )
        files.append(data)
    if not files:
        raise EmptyInput(f"the multipart body has no file part named {field!r}")
    return files


def _split_multipart(
    content_type: str, body: bytes, max_images: int
) -> list[tuple[str, bytes]] | None:
    """(name, bytes) of each file part of a plainly well-formed body; None for anything else.

    Accepted, and split as python-multipart splits it: `--boundary CRLF`, parts separated by
    `CRLF --boundary CRLF`, `CRLF --boundary--` and an optional CRLF at the end; each part has
    1-8 header lines `token: value` (no CR in a value, no folding), a blank line, then its
    bytes; its Content-Disposition has a name (UTF-8) and a filename (a file part). Not
    accepted, and left to the full parser: a charset parameter, a preamble or an epilogue,
    padding after a boundary, a delimiter inside a part's bytes that is no boundary, a text
    field, more than `max_images` files, anything malformed.
    """
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > _MAX_BOUNDARY or b"charset" in params:
        return None
    opening = b"--" + boundary + b"\r\n"
    if not body.startswith(opening):
        return None
    pieces = body[len(opening) :].split(b"\r\n--" + boundary)
    if len(pieces) - 1 > max_images or pieces[-1] not in (b"--", b"--\r\n"):
        return None
    parts = []
    for number, piece in enumerate(pieces[:-1]):
        # After a delimiter, CRLF starts a part (anything else is the full parser's to judge).
        start = 2 if number else 0
        if number and not piece.startswith(b"\r\n"):
            return None
        head, blank, data = piece[start:].partition(b"\r\n\r\n")
        if not blank or not head:  # no end of headers, or a part without headers
            return None
        name = _file_part_name(head)
        if name is None:
            return None
        parts.append((name, data))
    return parts


def _file_part_name(head: bytes) -> str | None:
    """The name of a file part from its header lines; None unless plainly a named file part."""
    lines = head.split(b"\r\n")
    if len(lines) > _MAX_PART_HEADERS:
        return None
    disposition = None
    for line in lines:
        key, colon, value = line.partition(b":")
        if not colon or not key or key.translate(None, _TOKEN) or b"\r" in value:
            return None
        if len(line) > _MAX_HEADER_LINE:
            return None
        if key.lower() == b"content-disposition":
            disposition = value.lstrip(b" ")  # the last one counts, as in Starlette
    return None if disposition is None else _disposition_name(disposition)


@functools.lru_cache(maxsize=256)
def _disposition_name(disposition: bytes) -> str | None:
    """Starlette's reading of a Content-Disposition: the name of a file part, else None.

    Cached: a client sends the same few dispositions over and over (bounded: 256 values).
    """
    _, options = parse_options_header(disposition.decode("latin-1"))
    name = options.get(b"name")
    if name is None or b"filename" not in options:
        return None
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return None


async def _parse_multipart(
    headers: Headers, body: bytes, max_images: int
) -> list[tuple[str, bytes]]:
    """Starlette's parser: (name, bytes) of each file part; text fields are skipped."""

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body
        yield b""

    parser = MultiPartParser(headers, stream(), max_files=max_images, max_fields=_MAX_TEXT_FIELDS)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise PayloadTooLarge(
                f"the request carries more than {max_images} images; the limit is "
                f"{max_images} images per request (max_images_per_request)"
            ) from exc
        raise BadInput(f"malformed multipart body: {exc.message}") from exc
    try:
        return [
            (name, await value.read())
            for name, value in form.multi_items()
            if isinstance(value, UploadFile)
        ]
    finally:
        await form.close()
