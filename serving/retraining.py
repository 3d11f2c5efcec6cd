"""Admin endpoints of retraining: labelled training images in, retrain jobs started and read.

POST /admin/training-images?model=M   a zip whose folders are labels, or multipart files
                                      (`images`) with a `label` field; each image checked
                                      by the served task's decoder and limits
GET  /admin/training-images?model=M   labelled images per label (uploads, review labels)
POST /admin/retrain                   {"model", "reason", "epochs"} -> 202 the queued job
GET  /admin/retrain?model=M           {"jobs": [...newest first]}
GET  /admin/retrain/{job}             one job: state, phase, progress, verdict, version, log

Every one needs the admin credential. The work runs in a process of its own
(`lifecycle.retrain`); these handlers only read and write the job records, in a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.responses import Response

from lifecycle.retrain import JOB_ID, Jobs, request_retrain, retrain_if_labels_reached
from lifecycle.settings import RegistrySettings, RetrainSettings
from lifecycle.training_data import Labelled, TrainingImages, unzip
from runners.errors import BadInput, Conflict, DeadlineExceeded, NotFound, UnsupportedMediaType
from serving.bodies import MULTIPART, media_type, read_body
from serving.openapi import ADMIN_ERRORS, ERRORS
from serving.query import check_query
from serving.settings import ServingSettings

ZIP_TYPES = ("application/zip", "application/x-zip-compressed")
_MODEL = "A served model family."
ModelParameter = Annotated[str, Query(min_length=1, max_length=64, description=_MODEL)]
_MAX_TEXT_FIELDS = 4


class RetrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=64, description=_MODEL, examples=["digits"])
    reason: str = Field(
        default="manual", min_length=1, max_length=500, description="Why: recorded in the job."
    )
    epochs: int | None = Field(
        default=None, ge=1, le=1000, description="Training epochs; null: the setting's."
    )


def _job_example() -> dict[str, Any]:
    return {
        "job": "20261205T061500-a1b2c3", "model": "digits", "state": "running",
        "phase": "training: epoch 2/5", "progress": 0.29, "reason": "manual", "epochs": 5,
        "created_at": 1764915300.0, "started_at": 1764915301.2, "finished_at": None,
        "labels_used": 300, "verdict": None, "version": None, "rollout": None, "error": None,
        "log_tail": "epoch 2/5 loss 0.41\n",
    }  # fmt: skip


def _ok(description: str, status: int = 200, example: Any = None) -> dict[int | str, Any]:
    content: dict[str, Any] = {"schema": {"type": "object"}}
    if example is not None:
        content["example"] = example
    return {status: {"description": description, "content": {"application/json": content}}}


_UPLOAD_ERRORS: dict[int | str, Any] = {
    413: ERRORS[413],
    415: ERRORS[415],
    422: {
        "description": "A well-formed upload none of whose images is usable (not a zip "
        "archive, or every image refused); each refusal is named.",
        "content": {"application/json": {"schema": ERRORS[422]["content"]["application/json"][
            "schema"], "example": {"error": "UnusableUpload", "reason": "unusable",
            "message": "none of the 2 images is usable: 7/a.png: cannot decode the image"}}},
    },
}  # fmt: skip


def _errors(*codes: int) -> dict[int | str, Any]:
    return {code: {**ADMIN_ERRORS, **_UPLOAD_ERRORS}[code] for code in codes}


def _upload_body(max_images: int) -> dict[str, Any]:
    binary = {"type": "string", "format": "binary"}
    return {
        "requestBody": {
            "required": True,
            "description": "A zip archive whose folders are labels (`7/a.png`), or "
            "multipart/form-data with a `label` field and file parts named `images`.",
            "content": {
                "application/zip": {"schema": {**binary, "minLength": 1}},
                MULTIPART: {
                    "schema": {
                        "type": "object",
                        "required": ["label", "images"],
                        "properties": {
                            "label": {"type": "string", "minLength": 1, "maxLength": 128},
                            "images": {
                                "type": "array",
                                "items": binary,
                                "minItems": 1,
                                "maxItems": max_images,
                            },
                        },
                    }
                },
            },
        }
    }


async def _multipart(request: Request, body: bytes, max_images: int) -> list[Labelled]:
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body
        yield b""

    parser = MultiPartParser(
        request.headers, stream(), max_files=max_images, max_fields=_MAX_TEXT_FIELDS
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadInput(f"malformed multipart body: {exc.message}") from exc
    try:
        labels = [value for name, value in form.multi_items() if name == "label"]
        if len(labels) != 1 or not isinstance(labels[0], str) or not labels[0].strip():
            raise BadInput("a multipart upload carries exactly one text field `label`")
        label = labels[0].strip()[:128]
        images: list[Labelled] = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != "images":
                    raise BadInput(
                        f"the multipart body has a file part named {name[:64]!r}; this "
                        f"endpoint reads file parts named 'images'"
                    )
                filename = (value.filename or f"image {len(images)}")[:200]
                images.append(Labelled(filename, label, await value.read()))
            elif name != "label":
                raise BadInput(f"unknown multipart field {name[:64]!r}: send `label` and `images`")
        if not images:
            raise BadInput("the multipart body has no file part named 'images'")
        return images
    finally:
        await form.close()


def add_retraining_routes(
    router: APIRouter,
    admin: list[Any],
    settings: ServingSettings,
    served_model: Callable[[Request, str], Any],
) -> None:
    """Add the routes to the admin router; `served_model(request, model)` resolves a served
    model (404 naming those that are)."""
    retrain = RetrainSettings()

    @router.post(
        "/training-images",
        dependencies=admin,
        summary="Upload labelled training images for a model's next retrain",
        description="Each image goes through the decoder and limits of the API; a refused one "
        "is named in the answer with why. 422 when no image is usable.",
        openapi_extra=_upload_body(retrain.training_upload_max_images),
        responses={
            **_ok("Accepted and refused images, and the counts per label."),
            **_errors(400, 401, 403, 404, 413, 415),
        },
    )
    async def upload(request: Request, model: ModelParameter) -> dict[str, Any]:
        check_query(request, frozenset({"model"}))
        served = served_model(request, model)
        kind = media_type(request)
        if kind not in (*ZIP_TYPES, MULTIPART):
            raise UnsupportedMediaType(
                f"Content-Type {kind or '(none)'!r} is not accepted; send application/zip or "
                f"{MULTIPART}"
            )
        try:
            async with asyncio.timeout(retrain.training_upload_timeout_s):
                body = await read_body(request, retrain.training_upload_max_bytes)
        except TimeoutError:
            raise DeadlineExceeded("the upload did not arrive within its deadline") from None
        limit = retrain.training_upload_max_images
        refused: list[dict[str, str]] = []
        if kind == MULTIPART:
            images = await _multipart(request, body, limit)
        else:
            images, refused = await anyio.to_thread.run_sync(
                unzip, body, limit, settings.max_body_bytes
            )
        store = TrainingImages(retrain)

        def add() -> dict[str, Any]:
            answer = store.add(
                model, images, task=served.task, entry=served.entry,
                limits=settings.image_limits, refused_already=refused,
            )  # fmt: skip
            retrain_if_labels_reached(model, answer["total"], retrain, settings.repository)
            return answer

        return await anyio.to_thread.run_sync(add)

    @router.get(
        "/training-images",
        dependencies=admin,
        summary="Labelled training images of a model, per label",
        responses={
            **_ok("Uploaded, review-labelled and all, per label."),
            **_errors(400, 401, 403, 404),
        },
    )
    async def counts(request: Request, model: ModelParameter) -> dict[str, Any]:
        check_query(request, frozenset({"model"}))
        served_model(request, model)
        found = await anyio.to_thread.run_sync(TrainingImages(retrain).counts, model)
        return {"model": model, **found}

    @router.post(
        "/retrain",
        dependencies=admin,
        status_code=202,
        summary="Retrain a model in the background on its labelled data",
        description="The result is registered only if it passes the gates, then rolled out "
        "as a canary (IMGSERVE_RETRAIN_ROLLOUT). 409 while one runs for the model.",
        responses={
            **_ok("The queued job.", 202, {**_job_example(), "state": "queued"}),
            **_errors(400, 401, 403, 404, 409),
        },
    )
    async def start(request: Request, body: RetrainRequest) -> Response:
        served_model(request, body.model)
        registry = RegistrySettings()
        if not registry.exists():
            raise Conflict(
                f"{body.model} is in no model registry ({registry.database} does not exist): a "
                f"retrain could not be registered; register it first (make models)"
            )

        def run() -> dict[str, Any]:
            job = request_retrain(
                body.model, body.reason, epochs=body.epochs, repository=settings.repository,
                settings=retrain,
            )  # fmt: skip
            return Jobs(retrain).describe(job)

        found = await anyio.to_thread.run_sync(run)
        from serving.app import json_response

        return json_response(found, 202)

    @router.get(
        "/retrain",
        dependencies=admin,
        summary="A model's retrain jobs, newest first",
        responses={
            **_ok("The jobs.", 200, {"jobs": [_job_example()]}),
            **_errors(400, 401, 403, 404),
        },
    )
    async def jobs(request: Request, model: ModelParameter) -> dict[str, Any]:
        check_query(request, frozenset({"model"}))
        served_model(request, model)

        def read() -> dict[str, Any]:
            store = Jobs(retrain)
            return {"jobs": [store.describe(job) for job in store.of(model)]}

        return await anyio.to_thread.run_sync(read)

    @router.get(
        "/retrain/{job}",
        dependencies=admin,
        summary="One retrain job: state, phase, progress, gate verdict, version, log",
        responses={**_ok("The job.", 200, _job_example()), **_errors(400, 401, 403, 404)},
    )
    async def job(
        request: Request,
        job: Annotated[str, Path(min_length=1, max_length=64, description="The job's id.")],
    ) -> dict[str, Any]:
        check_query(request, frozenset())
        if not JOB_ID.fullmatch(job):
            raise NotFound(f"no retrain job {job[:64]!r}")

        def read() -> dict[str, Any]:
            store = Jobs(retrain)
            return store.describe(store.get(job))

        return await anyio.to_thread.run_sync(read)
