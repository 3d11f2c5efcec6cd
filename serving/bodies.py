"""Request bodies: read under a byte cap, then split into encoded images.

BentoML puts no cap on a body, so the cap is enforced here before the whole body is held:
a declared Content-Length beyond it is refused unread, and a streamed body is refused as
soon as it crosses it. Two forms carry images: the raw image as the body
(`Content-Type: image/png`, `image/jpeg`, ... or `application/octet-stream`), and a
`multipart/form-data` upload with one file part per image.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

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
        files = []
        for name, value in form.multi_items():
            if not isinstance(value, UploadFile):
                continue
            if name != field:
                raise BadInput(
                    f"the multipart body has a file part named {name[:64]!r}; this endpoint "
                    f"reads file parts named {field!r}"
                )
            files.append(value)
        if not files:
            raise EmptyInput(f"the multipart body has no file part named {field!r}")
        return [await upload.read() for upload in files]
    finally:
        await form.close()
