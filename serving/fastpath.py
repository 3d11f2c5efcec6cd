"""The classify routes served without FastAPI's per-request machinery, same answers.

Under load the entry worker is the bottleneck, and FastAPI's route handling (dependency
solving, its middleware stack) is a sizeable share of its CPU per request (py-spy shows it
under `make bench-serve` load). This middleware, the outermost one of the FastAPI app,
answers a well-formed POST to the classify routes by calling the very handler the FastAPI
routes call; anything else — other routes, and any query a fast check cannot accept as
valid — goes on into the app, whose validation then produces the documented error. The app
stays a FastAPI app, so its OpenAPI document (and BentoML's, which merges it) is the one
FastAPI writes from the route declarations.

The entry service puts a second one outside BentoML's own middleware stack
(`service.serve_first`), which saves a similar share again: the requests it answers never
reach the inner one, which still serves an app run without BentoML (tests, tracing on).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable
from typing import Any, Protocol
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from runners.tasks import ROUTES as TASK_ROUTES

# path -> (endpoint label, many images), for every task's routes
ROUTES = {path: (endpoint, many) for path, (_, endpoint, many) in TASK_ROUTES.items()}
_TOP_K = re.compile(r"[1-9][0-9]{0,3}")
_MAX_LENGTH = {"model": 64, "variant": 16}  # as the FastAPI query declarations say (min 1)
_TOP_K_MAX = 1000
_VERSION = re.compile(r"[1-9][0-9]{0,5}")  # 1..999999, as the FastAPI declaration says


class Answer(Protocol):
    def __call__(
        self,
        request: Request,
        endpoint: str,
        *,
        model: str | None,
        variant: str | None,
        top_k: int | None,
        many: bool,
        version: int | None = None,
    ) -> Awaitable[Response]: ...


def parse_query(query_string: bytes) -> dict[str, Any] | None:
    """model, variant, top_k and version when plainly valid; None when FastAPI should judge
    them."""
    found: dict[str, Any] = {"model": None, "variant": None, "top_k": None, "version": None}
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key in _MAX_LENGTH:
            if not 1 <= len(value) <= _MAX_LENGTH[key]:
                return None
            found[key] = value
        elif key == "top_k":
            if not _TOP_K.fullmatch(value) or int(value) > _TOP_K_MAX:
                return None
            found[key] = int(value)
        elif key == "version":
            if not _VERSION.fullmatch(value):
                return None
            found[key] = int(value)
    return found


class FastPath:
    """Middleware: classify POSTs straight to the handler, the rest into the app."""

    def __init__(self, app: ASGIApp, answer: Answer, owner: Starlette | None = None) -> None:
        """`owner`: the app whose handler `answer` is, when this wraps more than that app
        (BentoML's stack around it: `service.serve_first`); its requests then carry it as
        `scope["app"]`, as they would have inside it."""
        self.app = app
        self.answer = answer
        self.owner = owner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"].removeprefix(scope.get("root_path", "")) or "/"
            route = ROUTES.get(path)
            query = parse_query(scope.get("query_string", b"")) if route else None
            owner = self.owner or scope["app"]
            initialised = getattr(owner.state, "gateway", None) is not None
            if route is not None and query is not None and initialised:
                scope["app"] = owner
                endpoint, many = route
                response = await self.answer(Request(scope, receive), endpoint, many=many, **query)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
