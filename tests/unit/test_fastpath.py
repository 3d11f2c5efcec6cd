"""The fast path takes only queries FastAPI would accept as they are; the rest go to FastAPI."""

from __future__ import annotations

import pytest

from serving.fastpath import parse_query


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", {"model": None, "variant": None, "top_k": None, "version": None}),
        (
            b"model=digits&variant=int8&top_k=3&version=2",
            {"model": "digits", "variant": "int8", "top_k": 3, "version": 2},
        ),
        (
            b"variant=fp32&variant=int8",
            {"model": None, "variant": "int8", "top_k": None, "version": None},
        ),
        (b"other=1", {"model": None, "variant": None, "top_k": None, "version": None}),
        (b"top_k=1000", {"model": None, "variant": None, "top_k": 1000, "version": None}),
    ],
)
def test_plainly_valid_queries_are_taken(query: bytes, expected: dict[str, object]) -> None:
    assert parse_query(query) == expected


@pytest.mark.parametrize(
    "query",
    [b"top_k=0", b"top_k=1001", b"top_k=abc", b"top_k=", b"top_k=+3", b"top_k=03",
     b"model=" + b"m" * 65, b"variant=" + b"v" * 17, b"model=", b"variant=",
     b"version=0", b"version=1000000", b"version=02", b"version=x"],
)  # fmt: skip
def test_anything_else_is_left_to_fastapi(query: bytes) -> None:
    assert parse_query(query) is None
