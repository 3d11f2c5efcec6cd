"""Shed at the admission limit before BentoML's middleware stack: a 429 for the least CPU.

Under overload most requests are refused, and on the entry worker's one event loop every
refusal takes CPU from the requests it admits. Refused at admission (`Gateway.admit`), a
request has already been through BentoML's ASGI stack (its timeout middleware runs each
request as a task of its own with a timer, its context middleware builds a Request), its
router and mount, and the FastAPI app's middleware. This middleware, which the entry service
wraps around BentoML's whole app (`service.serve_first`), answers a classify POST that the
limit would refuse with the same 429, Retry-After and message, counted the same way
(outcome="shed", under its model and variant), without reading the body, for less of the
entry worker's CPU per 429 than a refusal at admission (`python -m bench.refusal` measures
both). Everything else, including a request whose query or model the app must judge, a
worker not ready or draining, goes on into the app; admission stays the authority.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from runners.errors import ServingError
from serving.app import error_response
from serving.fastpath import ROUTES, parse_query
from serving.gateway import Gateway

# A body this small left unread is cheaper to discard than a reconnect (serving.bodies).
_DISCARD_MAX_BYTES = 64 * 1024


class ShedEarly:
    def __init__(self, app: ASGIApp, gateway: Callable[[], Gateway | None], retry_after_s: int):
        self.app = app
        self.gateway = gateway
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = ROUTES.get(scope["path"].removeprefix(scope.get("root_path", "")) or "/")
            gw = self.gateway() if route is not None else None
            if route is not None and gw is not None and gw.at_limit():
                query = parse_query(scope.get("query_string", b""))
                if query is not None:
                    try:
                        served = gw.catalog.resolve(query["model"], query["variant"])
                    except ServingError:
                        pass  # the app answers an unknown model with its 404
                    else:
                        error = gw.refuse()
                        gw.metrics.outcome(served.labels, route[0], error)
                        response = error_response(error, self.retry_after_s)
                        if _body_too_big_to_discard(scope):
                            response.headers["Connection"] = "close"
                        await response(scope, receive, send)
                        return
        await self.app(scope, receive, send)


def _body_too_big_to_discard(scope: Scope) -> bool:
    """As `serving.bodies.body_left_unread` decides for a body that was not read at all."""
    for name, value in scope["headers"]:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            return not value.isdigit() or int(value) > _DISCARD_MAX_BYTES
    return False
