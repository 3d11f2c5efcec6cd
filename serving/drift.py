"""Drift endpoints: open and read-only, what the web console shows (monitoring.drift).

    GET /v1/drift?model=digits            the latest check's summary (JSON)
    GET /v1/drift/history?model=digits    the recent checks: [{"at", "score", "drifted"}]
    GET /v1/drift/report?model=digits     the latest check's Evidently report (HTML)

They read what the checks stored (monitoring.monitor runs them); none computes one.
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from starlette.responses import HTMLResponse, Response

from monitoring import drift
from monitoring.settings import DriftSettings
from runners.errors import NotComputed, NotFound
from serving.openapi import DRIFT_EXAMPLE, drift_responses
from serving.query import check_query
from serving.settings import ServingSettings

ModelQuery = Annotated[
    str | None,
    Query(min_length=1, max_length=64, description="Model family; default: the first served."),
]
LimitQuery = Annotated[int, Query(ge=1, le=10_000, description="Most recent checks to return.")]


def drift_router(settings: ServingSettings) -> APIRouter:
    store = DriftSettings()
    router = APIRouter(prefix="/v1/drift", tags=["drift"])

    def family(model: str | None) -> str:
        model = model or settings.default_model or settings.models[0]
        if model not in settings.models:
            raise NotFound(f"unknown model {model[:64]!r}; models: {', '.join(settings.models)}")
        return model

    def not_yet(model: str) -> NotComputed:
        return NotComputed(
            f"no drift check of {model} yet: the service checks every "
            f"{store.drift_interval_s:g} s once its last {store.drift_window_s:g} s hold "
            f"{store.drift_min_rows} answered images (python -m monitoring drift --model "
            f"{model} runs one now)"
        )

    @router.get(
        "",
        summary="The latest drift check of a model: its verdict, each feature's test",
        responses=drift_responses("The latest check's summary.", DRIFT_EXAMPLE),
    )
    async def latest(request: Request, model: ModelQuery = None) -> dict[str, Any]:
        check_query(request, frozenset({"model"}))
        name = family(model)
        found = await anyio.to_thread.run_sync(drift.latest, name, store)
        if found is None:
            raise not_yet(name)
        return found

    @router.get(
        "/history",
        summary="A model's recent drift checks, oldest first",
        responses=drift_responses(
            "The recent checks (empty before the first).",
            [{"at": 1764914401.2, "score": 0.42, "drifted": False}],
        ),
    )
    async def history(
        request: Request, model: ModelQuery = None, limit: LimitQuery = 500
    ) -> list[dict[str, Any]]:
        check_query(request, frozenset({"model", "limit"}))
        found = await anyio.to_thread.run_sync(drift.history, family(model), store)
        return found[-limit:]

    @router.get(
        "/report",
        summary="The Evidently report (HTML) of a model's latest drift check",
        response_class=HTMLResponse,
        responses=drift_responses("Evidently's HTML report.", None, "text/html"),
    )
    async def report(request: Request, model: ModelQuery = None) -> Response:
        check_query(request, frozenset({"model"}))
        name = family(model)
        path = drift.report_path(name, store)

        def read() -> bytes | None:
            return path.read_bytes() if path.is_file() else None

        found = await anyio.to_thread.run_sync(read)
        if found is None:
            raise not_yet(name)
        return HTMLResponse(found)

    return router
