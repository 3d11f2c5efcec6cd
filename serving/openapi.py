"""What the OpenAPI document says about each route: bodies, examples and every status.

FastAPI writes the document from these declarations; BentoML's own `/docs.json` merges the
mounted app's paths into the service's document.
"""

from __future__ import annotations

from typing import Any

from serving.bodies import MULTIPART, RAW_MEDIA_TYPES

_PREDICTIONS = [
    {"label": "7", "index": 7, "score": 0.9981},
    {"label": "3", "index": 3, "score": 0.0009},
]
_ANSWERED_BY = {
    "model": "digits",
    "variant": "fp32",
    "backend": "onnxruntime",
    "model_name": "digits_fp32",
    "model_version": 1,
}
CLASSIFY_EXAMPLE = {**_ANSWERED_BY, "predictions": _PREDICTIONS}
DETECT_EXAMPLE = {
    **_ANSWERED_BY,
    "detections": [{"label": "7", "index": 7, "score": 0.93, "box": [12.0, 30.5, 40.0, 66.0]}],
}
DETECT_BATCH_EXAMPLE = {
    **_ANSWERED_BY,
    "results": [{"index": 0, "status": 200, "detections": DETECT_EXAMPLE["detections"]}],
}
BATCH_EXAMPLE = {
    **_ANSWERED_BY,
    "results": [
        {"index": 0, "status": 200, "predictions": _PREDICTIONS},
        {
            "index": 1,
            "status": 422,
            "error": {
                "error": "ImageDecodeError",
                "reason": "undecodable",
                "message": "cannot decode the image: it is not a JPEG, PNG, WebP, BMP or GIF image",
            },
        },
    ],
}

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "reason", "message"],
    "properties": {
        "error": {"type": "string", "description": "The error's class name."},
        "reason": {"type": "string", "description": "A closed set: also a metric label."},
        "message": {"type": "string", "description": "What was wrong; names the limit."},
    },
}


def _error(description: str, error: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {
                "schema": _ERROR_SCHEMA,
                "example": {"error": error, "reason": reason, "message": message},
            }
        },
    }


ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error(
        "Bad input: an empty body, a malformed multipart body or a bad query parameter.",
        "EmptyInput",
        "empty",
        "the image is empty (0 bytes)",
    ),
    404: _error(
        "Unknown model or variant; the message names what exists.",
        "NotFound",
        "not_found",
        "model 'digits' has no variant 'fp16'; variants: fp32, int8",
    ),
    413: _error(
        "A limit was exceeded: body bytes, images per request or pixels of an image.",
        "PayloadTooLarge",
        "too_large",
        "the body is 9000000 bytes; the limit is 8388608 bytes (max_body_bytes)",
    ),
    415: _error(
        "The Content-Type is not an accepted image type or multipart/form-data.",
        "UnsupportedMediaType",
        "media_type",
        "Content-Type 'text/plain' is not accepted; send one of: image/png, ...",
    ),
    422: _error(
        "The bytes are not a decodable image.",
        "ImageDecodeError",
        "undecodable",
        "cannot decode the image: it is not a JPEG, PNG, WebP, BMP or GIF image",
    ),
    429: {
        **_error(
            "Overloaded: shed at once instead of queueing into a timeout; retry after "
            "the Retry-After header's seconds.",
            "Overloaded",
            "shed",
            "the queue holds 512 images and its limit is 512; retry later",
        ),
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "integer"},
            }
        },
    },
    500: _error(
        "An internal failure (a runner failed the batch); never caused by input alone.",
        "RunnerFailed",
        "runner",
        "runner_digits_fp32 failed the batch: ...",
    ),
    503: _error(
        "Not ready: the models are still loading (see /readyz).",
        "NotReady",
        "not_ready",
        "the models are still loading; retry when /readyz answers 200",
    ),
    504: _error(
        "The request was not answered within its deadline (request_timeout_s).",
        "DeadlineExceeded",
        "timeout",
        "the request was not answered within its 10 s deadline",
    ),
}

_BINARY = {"type": "string", "format": "binary"}
# One image per request: an empty one is a 400. In a batch, an empty part is answered in its slot.
_ONE_IMAGE = {**_BINARY, "minLength": 1}


def classify_body() -> dict[str, Any]:
    """One image: the raw body, or one file part named `image`.

    No example: a binary body has no JSON form (a base64 string would be sent as its text).
    """
    raw: dict[str, dict[str, Any]] = {kind: {"schema": _ONE_IMAGE} for kind in RAW_MEDIA_TYPES}
    return {
        "requestBody": {
            "required": True,
            "description": "One image as the raw body (Content-Type image/png, image/jpeg, "
            "...), or as a multipart/form-data upload with one file part named `image`.",
            "content": {
                **raw,
                MULTIPART: {
                    "schema": {
                        "type": "object",
                        "required": ["image"],
                        "properties": {"image": _ONE_IMAGE},
                    }
                },
            },
        }
    }


def batch_body(max_images: int) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": f"Up to {max_images} images as file parts named `images`; results "
            "come back in the same order.",
            "content": {
                MULTIPART: {
                    "schema": {
                        "type": "object",
                        "required": ["images"],
                        "properties": {
                            "images": {
                                "type": "array",
                                "items": _BINARY,
                                "minItems": 1,
                                "maxItems": max_images,
                            }
                        },
                    }
                }
            },
        }
    }


def responses(example: dict[str, Any], description: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {"description": description, "content": {"application/json": {"example": example}}},
        **ERRORS,
    }


ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("A malformed body or parameter.", "BadInput", "bad_input", "invalid request..."),
    401: {
        **_error(
            "No admin credential (Authorization: Bearer <token>).",
            "Unauthorized",
            "unauthorized",
            "this endpoint needs the admin credential: Authorization: Bearer",
        ),
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    403: _error(
        "A wrong admin credential, or none configured on the server.",
        "Forbidden",
        "forbidden",
        "the admin credential is wrong",
    ),
    404: _error("Unknown model or registry version.", "NotFound", "not_found", "unknown model 'x'"),
    409: _error(
        "The change contradicts the current state (a rollout already running, or none).",
        "Conflict",
        "conflict",
        "digits: no rollout is in progress",
    ),
    503: _error(
        "The model registry cannot be reached.",
        "RegistryError",
        "registry",
        "model registry http://mlflow:5000: ...",
    ),
}


def admin_responses(description: str) -> dict[int | str, dict[str, Any]]:
    """A state-changing endpoint's responses: 200 with a JSON object, and its errors."""
    return {
        200: {
            "description": description,
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        **ADMIN_ERRORS,
    }


_SHARES = {"edges": [0.0, 0.5, 0.9, 0.99, 1.0], "shares": [0.01, 0.04, 0.1, 0.85]}
DRIFT_EXAMPLE = {
    "model": "digits",
    "version": 1,
    "window": {"start": 1764910800.0, "end": 1764914400.0, "count": 1200},
    "drifted": True,
    "score": 7.9,
    "features": [
        {"name": "label", "test": "psi", "statistic": 0.41, "threshold": 0.2, "drifted": True},
        {
            "name": "pixel_mean",
            "test": "wasserstein",
            "statistic": 1.97,
            "threshold": 0.25,
            "drifted": True,
        },
    ],
    "reference": {"classes": {"0": 0.1, "1": 0.1}, "confidence": _SHARES},
    "current": {"classes": {"0": 0.02, "1": 0.3}, "confidence": _SHARES},
    "computed_at": 1764914401.2,
}
DRIFT_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("A bad query parameter.", "BadInput", "bad_input", "unknown query parameters"),
    404: _error(
        "Unknown model; the message names the served ones.",
        "NotFound",
        "not_found",
        "unknown model 'cats'; models: digits",
    ),
    409: _error(
        "No drift check of the model has been computed yet.",
        "NotComputed",
        "not_computed",
        "no drift check of digits yet: ...",
    ),
}


def drift_responses(
    description: str, example: Any, media_type: str = "application/json"
) -> dict[int | str, dict[str, Any]]:
    content: dict[str, Any] = {"example": example} if media_type == "application/json" else {}
    return {200: {"description": description, "content": {media_type: content}}, **DRIFT_ERRORS}
