"""Admin endpoints behind the admin credential: rollout, shares, promote, rollback, the
review queue (its items and images are users' traffic, so reading them needs it too), and
retraining (`serving.retraining`).

The credential is a bearer token from `IMGSERVE_ADMIN_TOKEN` or the file
`IMGSERVE_ADMIN_TOKEN_FILE` (a mounted secret), compared in constant time: no header is a
401, a wrong token a 403, and with no token configured every state change is a 403 that says
how to configure one. The web console's session (`serving.session`: a cookie signed with the
same token, with its CSRF token in the `X-CSRF-Token` header) stands for it too. Reading a
rollout's state and inference need no credential.
"""

from __future__ import annotations

import hmac
import io
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from lifecycle.retrain import retrain_if_labels_reached
from lifecycle.settings import RetrainSettings
from lifecycle.supervisor import Rollouts
from lifecycle.training_data import TrainingImages
from monitoring.review import MEDIA_TYPES, ReviewQueue
from runners.errors import Forbidden, NotFound, Unauthorized
from serving import session
from serving.openapi import ADMIN_ERRORS, admin_responses
from serving.query import check_query
from serving.retraining import add_retraining_routes
from serving.settings import ServingSettings

_MODEL = "Model family; default: the first served."
IMAGE_TYPES = sorted(set(MEDIA_TYPES.values()) | {"application/octet-stream"})
ModelQuery = Annotated[str | None, Query(min_length=1, max_length=64, description=_MODEL)]
SAFE_METHODS = frozenset({"GET", "HEAD"})


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(
        default=None, min_length=1, max_length=64, description=_MODEL, examples=["digits"]
    )
    version: int = Field(ge=1, description="The registry version to roll out.", examples=[2])
    canary_share: float = Field(default=0.1, ge=0, le=1, description="Share it answers.")
    shadow_share: float = Field(default=0.0, ge=0, le=1, description="Share it shadows.")
    decide: bool = Field(default=True, description="Let the controller promote or roll back.")


class SharesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(
        default=None, min_length=1, max_length=64, description=_MODEL, examples=["digits"]
    )
    canary_share: float = Field(ge=0, le=1)
    shadow_share: float = Field(default=0.0, ge=0, le=1)


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(
        default=None, min_length=1, max_length=64, description=_MODEL, examples=["digits"]
    )
    reason: str = Field(default="manual", max_length=500)


class LabelDecision(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    label: str = Field(min_length=1, max_length=128, description="The true label.", examples=["7"])
    by: str = Field(default="admin", min_length=1, max_length=128, description="Who decided.")


class DiscardDecision(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    by: str = Field(default="admin", min_length=1, max_length=128, description="Who decided.")


def _zipped(queue: ReviewQueue, model: str) -> bytes:
    """`ReviewQueue.export`'s folder tree as zip bytes (stored: the images are compressed)."""
    with tempfile.TemporaryDirectory() as folder:
        queue.export(model, Path(folder))
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
            for path in sorted(Path(folder).rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(folder).as_posix())
        return out.getvalue()


def admin_token(settings: ServingSettings) -> str | None:
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value()
    if settings.admin_token_file is not None:
        return settings.admin_token_file.read_text().strip() or None
    return None


def admin_router(settings: ServingSettings) -> APIRouter:
    token = admin_token(settings)
    retrain = RetrainSettings()
    bearer = HTTPBearer(auto_error=False, description="The admin credential.")

    def require_admin(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        if token is None:
            raise Forbidden(
                "state-changing endpoints are disabled: set IMGSERVE_ADMIN_TOKEN or "
                "IMGSERVE_ADMIN_TOKEN_FILE"
            )
        if credentials is None or not credentials.credentials:
            cookie = request.cookies.get(session.COOKIE)
            if cookie is None:
                raise Unauthorized(
                    "this endpoint needs the admin credential: Authorization: Bearer"
                )
            if not session.valid(token, cookie, settings.console_session_s):
                raise Unauthorized("the console session has expired or is not valid: log in")
            # Reads (a review image in an <img>) need the cookie only: SameSite=Strict keeps
            # it off cross-site requests, and another origin cannot read the answer.
            csrf = request.headers.get(session.CSRF_HEADER)
            if request.method not in SAFE_METHODS and not session.csrf_valid(token, cookie, csrf):
                raise Forbidden(f"the console session needs its {session.CSRF_HEADER} header")
            return
        if not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise Forbidden("the admin credential is wrong")

    def rollouts(request: Request, model: str | None) -> tuple[Rollouts, str]:
        found: Rollouts | None = getattr(request.app.state, "rollouts", None)
        if found is None:
            raise NotFound("the service is not initialised")
        model = model or found.families[0]
        if model not in found.families:
            raise NotFound(f"unknown model {model[:64]!r}; models: {', '.join(found.families)}")
        return found, model

    router = APIRouter(prefix="/admin", tags=["admin"])
    admin = [Depends(require_admin)]

    def open_read(description: str) -> dict[int | str, Any]:
        """The statuses of a read that needs no credential."""
        return {k: v for k, v in admin_responses(description).items() if k in (200, 400, 404)}

    @router.get(
        "/rollouts",
        summary="A model's rollout, the decisions taken and the thresholds",
        responses=open_read("The rollout's state."),
    )
    async def status(request: Request, model: ModelQuery = None) -> dict[str, Any]:
        check_query(request, frozenset({"model"}))
        found, model = rollouts(request, model)
        return found.status(model)

    @router.get(
        "/versions",
        summary="A model's registered versions, oldest first, with their aliases",
        responses=open_read("The versions."),
    )
    async def versions(request: Request, model: ModelQuery = None) -> dict[str, Any]:
        check_query(request, frozenset({"model"}))
        found, model = rollouts(request, model)
        return {"model": model, "versions": await found.versions(model)}

    @router.post(
        "/rollout",
        dependencies=admin,
        summary="Roll a registry version out beside the champion",
        responses=admin_responses("The rollout started."),
    )
    async def start(request: Request, body: RolloutRequest) -> dict[str, Any]:
        found, model = rollouts(request, body.model)
        return await found.start(
            model, body.version, body.canary_share, body.shadow_share, body.decide
        )

    @router.post(
        "/shares",
        dependencies=admin,
        summary="Change the running rollout's canary and shadow shares",
        responses=admin_responses("The new shares."),
    )
    async def shares(request: Request, body: SharesRequest) -> dict[str, Any]:
        found, model = rollouts(request, body.model)
        return await found.shares(model, body.canary_share, body.shadow_share)

    @router.post(
        "/promote",
        dependencies=admin,
        summary="Promote the challenger now",
        responses=admin_responses("The decision."),
    )
    async def promote(request: Request, body: DecisionRequest) -> dict[str, Any]:
        found, model = rollouts(request, body.model)
        return await found.promote(model, body.reason, {})

    @router.post(
        "/rollback",
        dependencies=admin,
        summary="Roll the challenger back now",
        responses=admin_responses("The decision."),
    )
    async def rollback(request: Request, body: DecisionRequest) -> dict[str, Any]:
        found, model = rollouts(request, body.model)
        return await found.rollback(model, body.reason, {})

    def review(request: Request) -> ReviewQueue:
        found: ReviewQueue | None = getattr(request.app.state, "review", None)
        if found is None:
            found = request.app.state.review = ReviewQueue()
        return found

    def labels_of(request: Request, model: str) -> tuple[str, ...]:
        gateway = getattr(request.app.state, "gateway", None)
        if gateway is None:
            raise NotFound("the service is not initialised")
        return tuple(gateway.catalog.resolve(model, None).entry.labels)

    @router.get(
        "/review",
        dependencies=admin,
        summary="The review queue: uncertain predictions waiting for a person's label",
        responses={k: v for k, v in admin_responses("Waiting items, oldest first.").items()
                   if k in (200, 400, 401, 403, 404)},
    )  # fmt: skip
    async def queued(
        request: Request,
        model: Annotated[str, Query(min_length=1, max_length=64, description="Model family.")],
        limit: Annotated[int, Query(ge=1, le=500, description="Items at most.")] = 50,
    ) -> dict[str, Any]:
        check_query(request, frozenset({"model", "limit"}))
        rollouts(request, model)  # a served model, or 404 naming those that are
        queue = review(request)
        return await anyio.to_thread.run_sync(queue.pending, model, limit)

    @router.get(
        "/review/export",
        dependencies=admin,
        summary="The labelled images of a model as a zip: one folder per label (ImageFolder)",
        response_class=Response,
        responses={
            200: {
                "description": "A zip of `<label>/<id><ext>`.",
                "content": {"application/zip": {}},
            },
            **{k: v for k, v in ADMIN_ERRORS.items() if k in (400, 401, 403, 404)},
        },
    )
    async def export(
        request: Request,
        model: Annotated[str, Query(min_length=1, max_length=64, description="Model family.")],
    ) -> Response:
        check_query(request, frozenset({"model"}))
        rollouts(request, model)
        queue = review(request)
        data = await anyio.to_thread.run_sync(_zipped, queue, model)
        return Response(
            data,
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{model}-labelled.zip"'},
        )

    @router.get(
        "/review/{prediction_id}/image",
        dependencies=admin,
        summary="A queued prediction's image, as it was sent",
        response_class=Response,
        responses={
            200: {"description": "The image.", "content": {t: {} for t in IMAGE_TYPES}},
            **{k: v for k, v in ADMIN_ERRORS.items() if k in (400, 401, 403, 404)},
        },
    )
    async def image(
        request: Request, prediction_id: Annotated[int, PathParam(ge=1, le=2**62)]
    ) -> Response:
        data, media_type = await anyio.to_thread.run_sync(review(request).image, prediction_id)
        return Response(data, media_type=media_type)

    async def decided(
        request: Request, prediction_id: int, label: str | None, by: str
    ) -> dict[str, Any]:
        queue = review(request)
        model = await anyio.to_thread.run_sync(queue.model_of, prediction_id)
        labels = labels_of(request, model)

        def run() -> dict[str, Any]:
            decision = queue.decide(prediction_id, label, by, labels)
            if label is not None and retrain.retrain_after_labels is not None:
                total = TrainingImages(retrain).counts(model)["total"]
                retrain_if_labels_reached(model, total, retrain, settings.repository)
            return decision

        return await anyio.to_thread.run_sync(run)

    @router.post(
        "/review/{prediction_id}/label",
        dependencies=admin,
        summary="Label a queued prediction with its true label",
        responses=admin_responses("The decision, with the model's guess."),
    )
    async def label(
        request: Request,
        prediction_id: Annotated[int, PathParam(ge=1, le=2**62)],
        body: LabelDecision,
    ) -> dict[str, Any]:
        return await decided(request, prediction_id, body.label, body.by)

    @router.post(
        "/review/{prediction_id}/discard",
        dependencies=admin,
        summary="Discard a queued prediction: not an image of any label",
        responses=admin_responses("The decision, with the model's guess."),
    )
    async def discard(
        request: Request,
        prediction_id: Annotated[int, PathParam(ge=1, le=2**62)],
        body: DiscardDecision,
    ) -> dict[str, Any]:
        return await decided(request, prediction_id, None, body.by)

    def served_model(request: Request, model: str) -> Any:
        rollouts(request, model)  # a served model, or 404 naming those that are
        gateway = getattr(request.app.state, "gateway", None)
        if gateway is None:
            raise NotFound("the service is not initialised")
        return gateway.catalog.resolve(model, None)

    add_retraining_routes(router, admin, settings, served_model)
    return router
