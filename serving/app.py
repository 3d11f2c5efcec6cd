"""The HTTP app mounted on the entry service: classify routes, the model list, /metrics.

Raw and multipart bodies, the byte cap before the body is held, 429 with Retry-After, 504
and a complete OpenAPI document are plain to write in a FastAPI app and awkward in typed
`@bentoml.api` IO descriptors, so the entry service mounts this app (`bentoml.asgi_app`).
One handler turns every `ServingError` into `{error, reason, message}` with its status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match

from console.routes import console_router
from runners.errors import BadInput, DeadlineExceeded, NotFound, ServingError
from runners.tasks import ROUTES, TASKS, AnswerOptions, Task
from serving.admin import admin_router
from serving.bodies import body_left_unread, read_images
from serving.drift import drift_router
from serving.fastpath import FastPath
from serving.gateway import Gateway, VersionFailed
from serving.metrics import UNKNOWN, render_latest
from serving.openapi import (
    BATCH_EXAMPLE,
    CLASSIFY_EXAMPLE,
    DETECT_BATCH_EXAMPLE,
    DETECT_EXAMPLE,
    batch_body,
    classify_body,
    responses,
)
from serving.query import check_query
from serving.settings import ServingSettings

logger = logging.getLogger("serving")

ModelQuery = Annotated[
    str | None,
    Query(min_length=1, max_length=64, description="Model family; default from configuration."),
]
VariantQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=16,
        description="`fp32`, `int8` or `bf16` (where offered); default from configuration.",
    ),
]
TopKQuery = Annotated[
    int | None, Query(ge=1, le=1000, description="Labels to return; default from configuration.")
]
# endpoint label -> the task whose routes it counts
ENDPOINT_TASKS = {endpoint: task for task, endpoint, _ in ROUTES.values()}
# A misspelt (`?varaint=int8`) or repeated parameter must not be served silently.
VersionQuery = Annotated[
    int | None,
    Query(
        ge=1,
        le=999999,
        description="Model version to answer with (one that is loaded); default: the champion, "
        "or the challenger for the canary share of requests during a rollout.",
    ),
]
QUERY_PARAMETERS = frozenset({"model", "variant", "top_k", "version"})
# The documented answer of each task's routes besides classification's: one image, a batch.
TASK_EXAMPLES = {"detection": (DETECT_EXAMPLE, DETECT_BATCH_EXAMPLE)}


REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _request_id(request: Request) -> str:
    """The client's X-Request-ID when it is a plain token of at most 64 characters, else a
    new one: the prediction log's key for the request, sent back in the same header."""
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")).encode(),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def error_response(error: ServingError, retry_after_s: int = 1) -> Response:
    """The one place a ServingError becomes an HTTP answer."""
    headers = None
    if error.http_status == 429:
        headers = {"Retry-After": str(retry_after_s)}
    elif error.http_status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="imgserve admin"'}
    return json_response(error.to_dict(), error.http_status, headers)


def _methods(routes: Any, scope: Any) -> set[str]:
    """The methods of every route (included routers too) whose path matches the request's."""
    found: set[str] = set()
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's included router
        if included is not None:
            found |= _methods(included.routes, scope)
        elif route.matches(scope)[0] is not Match.NONE:
            found |= set(getattr(route, "methods", None) or ())
    return found


def create_app(settings: ServingSettings) -> FastAPI:
    app = FastAPI(
        title="Image classification",
        version="1",
        description="Classify images with FP32, BF16 (where the CPU has it) or INT8 variants "
        "behind adaptive batching.",
        openapi_url="/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
    )

    def gateway(request: Request) -> Gateway:
        found: Gateway | None = getattr(request.app.state, "gateway", None)
        if found is None:
            raise NotFound("the service is not initialised")
        return found

    async def answer(
        request: Request,
        endpoint: str,
        *,
        model: str | None,
        variant: str | None,
        top_k: int | None,
        many: bool,
        version: int | None = None,
    ) -> Response:
        gw = gateway(request)
        response = await _answer(request, gw, endpoint, model=model, variant=variant,
                                 top_k=top_k, many=many, version=version)  # fmt: skip
        if response.status_code >= 400 and body_left_unread(request):
            # Refused before a large body was read (too large, wrong type, unknown model...):
            # close the connection after the answer (RFC 9110 allows it for 413) rather than
            # read and discard an upload of any size to keep the connection alive.
            response.headers["Connection"] = "close"
        elif gw.drain.refusing:
            # Draining: close each kept-alive connection after its answer, so that its client
            # reconnects (and is refused) instead of racing the server's final close. Not
            # before: new connections then would wait in the backlog that stopping resets.
            response.headers["Connection"] = "close"
        return response

    async def _answer(
        request: Request,
        gw: Gateway,
        endpoint: str,
        *,
        model: str | None,
        variant: str | None,
        top_k: int | None,
        many: bool,
        version: int | None = None,
    ) -> Response:
        start = time.perf_counter()
        labels = UNKNOWN
        try:
            # Resolved first, so that a request shed at admission is counted under its variant.
            served = gw.catalog.resolve(model, variant)
            labels = served.labels
            if ENDPOINT_TASKS[endpoint] is not served.task:
                raise NotFound(
                    f"model {served.entry.family!r} is a {served.task.name} model: send it to "
                    f"{served.task.route} (or {served.task.route}/batch)"
                )
            with gw.admit(), gw.metrics.in_flight.labels(**labels).track_inprogress():
                check_query(request, QUERY_PARAMETERS)
                limit = settings.max_images_per_request if many else 1
                field = "images" if many else "image"
                # A body that stops arriving must not hold its connection and admission slot
                # for ever: the request's deadline covers reading it too.
                try:
                    async with asyncio.timeout(settings.request_timeout_s):
                        images = await read_images(request, settings.max_body_bytes, limit, field)
                except TimeoutError:
                    raise DeadlineExceeded(
                        f"the request body did not arrive within the "
                        f"{settings.request_timeout_s:g} s deadline"
                    ) from None
                options = AnswerOptions(top_k=top_k or settings.top_k)
                answered = await gw.answer(served, images, options, version)
        except ServingError as exc:
            if isinstance(exc, VersionFailed):
                gw.metrics.versions.answered_by(labels, exc.version, "error", None)
            gw.metrics.outcome(labels, endpoint, exc)
            return error_response(exc, settings.retry_after_s)
        results = answered.slots
        entry = served.entry
        body: dict[str, Any] = {
            **labels,
            "model_name": entry.name,
            "model_version": answered.version,
        }
        if many:
            slots = []
            for i, result in enumerate(results):
                if isinstance(result, ServingError):
                    gw.metrics.outcome(labels, endpoint, result)
                    slots.append(
                        {"index": i, "status": result.http_status, "error": result.to_dict()}
                    )
                else:
                    slots.append({"index": i, "status": 200, served.task.answer_key: result})
            body["results"] = slots
        else:
            result = results[0]
            if isinstance(result, ServingError):
                gw.metrics.outcome(labels, endpoint, result)
                return error_response(result)
            body[served.task.answer_key] = result
        gw.metrics.outcome(labels, endpoint, None)
        duration_ms = (time.perf_counter() - start) * 1000
        gw.metrics.request_duration_ms.labels(**labels, endpoint=endpoint).observe(duration_ms)
        gw.metrics.versions.answered_by(labels, answered.version, "ok", duration_ms)
        request_id = _request_id(request)
        gw.log_answers(served, answered, images, request_id, duration_ms)
        return json_response(body, headers={REQUEST_ID_HEADER: request_id})

    @app.post(
        "/v1/classify",
        summary="Classify one image",
        description="Top-k labels with scores, and the model, variant, backend and version "
        "that answered.",
        responses=responses(CLASSIFY_EXAMPLE, "Top-k labels of the image."),
        openapi_extra=classify_body(),
        response_model=None,
    )
    async def classify(
        request: Request,
        model: ModelQuery = None,
        variant: VariantQuery = None,
        top_k: TopKQuery = None,
        version: VersionQuery = None,
    ) -> Response:
        return await answer(
            request, "classify", model=model, variant=variant, top_k=top_k, many=False,
            version=version,
        )  # fmt: skip

    @app.post(
        "/v1/classify/batch",
        summary="Classify several images in one request",
        description=f"Up to {settings.max_images_per_request} images (max_images_per_request); "
        "results in input order. A bad image is answered in its own slot with its status and "
        "error; the others are classified.",
        responses=responses(BATCH_EXAMPLE, "One result per image, in input order."),
        openapi_extra=batch_body(settings.max_images_per_request),
        response_model=None,
    )
    async def classify_batch(
        request: Request,
        model: ModelQuery = None,
        variant: VariantQuery = None,
        top_k: TopKQuery = None,
        version: VersionQuery = None,
    ) -> Response:
        return await answer(
            request, "classify_batch", model=model, variant=variant, top_k=top_k, many=True,
            version=version,
        )  # fmt: skip

    def task_routes(task: Task) -> None:
        """A task's routes besides the classifier's (whose own above document top_k): one
        image, and several in one request, with the same body forms and errors."""

        def handler(endpoint: str, many: bool) -> Callable[..., Awaitable[Response]]:
            async def route(
                request: Request,
                model: ModelQuery = None,
                variant: VariantQuery = None,
                version: VersionQuery = None,
            ) -> Response:
                return await answer(
                    request, endpoint, model=model, variant=variant, top_k=None, many=many,
                    version=version,
                )  # fmt: skip

            return route

        one, many = handler(task.endpoint, False), handler(f"{task.endpoint}_batch", True)

        example, batch_example = TASK_EXAMPLES[task.name]
        app.add_api_route(
            task.route, one, methods=["POST"], summary=f"{task.name.capitalize()}: one image",
            responses=responses(example, f"The {task.answer_key} of the image."),
            openapi_extra=classify_body(), response_model=None,
        )  # fmt: skip
        app.add_api_route(
            f"{task.route}/batch", many, methods=["POST"],
            summary=f"{task.name.capitalize()}: several images in one request",
            description=f"Up to {settings.max_images_per_request} images "
            "(max_images_per_request); results in input order. A bad image is answered in "
            "its own slot with its status and error.",
            responses=responses(batch_example, "One result per image, in input order."),
            openapi_extra=batch_body(settings.max_images_per_request), response_model=None,
        )  # fmt: skip

    for task in TASKS.values():
        if task.route != "/v1/classify":
            task_routes(task)

    @app.get(
        "/v1/models",
        summary="Served models and variants with their model-card figures",
        responses={200: {"description": "Models, variants, defaults and card figures."}},
        response_model=None,
    )
    async def models(request: Request) -> Response:
        return json_response(gateway(request).catalog.describe())

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        content, media_type = render_latest()
        return Response(content, media_type=media_type)

    @app.exception_handler(RequestValidationError)
    async def bad_query(_: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}"
            for err in exc.errors()
        )
        return error_response(BadInput(f"invalid request parameters: {problems}"))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(NotFound(f"no route {request.url.path}; see /docs.json"))
        body = {"error": "HTTPException", "reason": "http", "message": str(exc.detail)}
        # A 405 carries Allow (RFC 9110), which Starlette puts on the exception; it names
        # the first route of the path only, so a path with several routes (GET and POST
        # /admin/retrain) lists every route's methods.
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            methods = _methods(request.app.router.routes, request.scope)
            if methods:
                headers["Allow"] = ", ".join(sorted(methods))
        return json_response(body, exc.status_code, headers)

    @app.exception_handler(ServingError)
    async def serving_error(_: Request, exc: ServingError) -> Response:
        return error_response(exc, settings.retry_after_s)

    app.include_router(admin_router(settings))
    app.include_router(drift_router(settings))
    app.include_router(console_router(settings))
    app.add_middleware(FastPath, answer=answer)
    app.state.answer = answer  # for a FastPath outside the app (service.serve_first)
    return app
