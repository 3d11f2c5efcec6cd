"""State-changing endpoints (rollout, shares, promote, rollback) behind the admin credential.

The credential is a bearer token from `IMGSERVE_ADMIN_TOKEN` or the file
`IMGSERVE_ADMIN_TOKEN_FILE` (a mounted secret), compared in constant time: no header is a
401, a wrong token a 403, and with no token configured every state change is a 403 that says
how to configure one. Reading a rollout's state and inference need no credential.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from lifecycle.supervisor import Rollouts
from runners.errors import Forbidden, NotFound, Unauthorized
from serving.openapi import admin_responses
from serving.settings import ServingSettings

_MODEL = "Model family; default: the first served."
ModelQuery = Annotated[str | None, Query(min_length=1, max_length=64, description=_MODEL)]


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


def admin_token(settings: ServingSettings) -> str | None:
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value()
    if settings.admin_token_file is not None:
        return settings.admin_token_file.read_text().strip() or None
    return None


def admin_router(settings: ServingSettings) -> APIRouter:
    token = admin_token(settings)
    bearer = HTTPBearer(auto_error=False, description="The admin credential.")

    def require_admin(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        if token is None:
            raise Forbidden(
                "state-changing endpoints are disabled: set IMGSERVE_ADMIN_TOKEN or "
                "IMGSERVE_ADMIN_TOKEN_FILE"
            )
        if credentials is None or not credentials.credentials:
            raise Unauthorized("this endpoint needs the admin credential: Authorization: Bearer")
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

    @router.get(
        "/rollouts",
        summary="A model's rollout, the decisions taken and the thresholds",
        responses={k: v for k, v in admin_responses("The rollout's state.").items()
                   if k in (200, 400, 404)},
    )  # fmt: skip
    async def status(request: Request, model: ModelQuery = None) -> dict[str, Any]:
        found, model = rollouts(request, model)
        return found.status(model)

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

    return router
