"""State-changing endpoints (rollout, shares, promote, rollback) behind the admin credential.

The credential is a bearer token from `IMGSERVE_ADMIN_TOKEN` or the file
`IMGSERVE_ADMIN_TOKEN_FILE` (a mounted secret), compared in constant time: no header is a
401, a wrong token a 403, and with no token configured every state change is a 403 that says
how to configure one. Reading a rollout's state and inference need no credential.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from runners.errors import Forbidden, NotFound, Unauthorized
from serving.rollouts import Rollouts
from serving.settings import ServingSettings


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, description="The registry version to roll out.")
    canary_share: float = Field(default=0.1, ge=0, le=1, description="Share it answers.")
    shadow_share: float = Field(default=0.0, ge=0, le=1, description="Share it shadows.")
    decide: bool = Field(default=True, description="Let the controller promote or roll back.")


class SharesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    canary_share: float = Field(ge=0, le=1)
    shadow_share: float = Field(default=0.0, ge=0, le=1)


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="manual", max_length=500)


def admin_token(settings: ServingSettings) -> str | None:
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value()
    if settings.admin_token_file is not None:
        return settings.admin_token_file.read_text().strip() or None
    return None


def admin_router(settings: ServingSettings) -> APIRouter:
    token = admin_token(settings)

    def require_admin(request: Request) -> None:
        if token is None:
            raise Forbidden(
                "state-changing endpoints are disabled: set IMGSERVE_ADMIN_TOKEN or "
                "IMGSERVE_ADMIN_TOKEN_FILE"
            )
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Unauthorized("this endpoint needs the admin credential: Authorization: Bearer")
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Forbidden("the admin credential is wrong")

    def rollouts(request: Request, model: str) -> Rollouts:
        found: Rollouts | None = getattr(request.app.state, "rollouts", None)
        if found is None:
            raise NotFound("the service is not initialised")
        if model not in found.families:
            raise NotFound(f"unknown model {model!r}; models: {', '.join(found.families)}")
        return found

    router = APIRouter(prefix="/admin/models/{model}", tags=["admin"])
    admin = [Depends(require_admin)]

    @router.get("/rollout", summary="The model's rollout, decisions and thresholds")
    async def status(request: Request, model: str) -> dict[str, Any]:
        return rollouts(request, model).status(model)

    @router.post("/rollout", dependencies=admin, summary="Roll a registry version out")
    async def start(request: Request, model: str, body: RolloutRequest) -> dict[str, Any]:
        return await rollouts(request, model).start(
            model, body.version, body.canary_share, body.shadow_share, body.decide
        )

    @router.patch("/rollout", dependencies=admin, summary="Change the canary and shadow shares")
    async def shares(request: Request, model: str, body: SharesRequest) -> dict[str, Any]:
        return await rollouts(request, model).shares(model, body.canary_share, body.shadow_share)

    @router.post("/promote", dependencies=admin, summary="Promote the challenger now")
    async def promote(
        request: Request, model: str, body: DecisionRequest | None = None
    ) -> dict[str, Any]:
        reason = body.reason if body else "manual"
        return await rollouts(request, model).promote(model, reason, {})

    @router.post("/rollback", dependencies=admin, summary="Roll the challenger back now")
    async def rollback(
        request: Request, model: str, body: DecisionRequest | None = None
    ) -> dict[str, Any]:
        reason = body.reason if body else "manual"
        return await rollouts(request, model).rollback(model, reason, {})

    return router
