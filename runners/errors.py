"""The project's one error root and its few structured subclasses.

Every error a client can cause or see carries the HTTP status and gRPC status code it maps
to, and a `reason` from a closed set (it becomes a metric label, so it must never hold a
user string). Front ends turn any `ServingError` into a response with one handler.
"""

from __future__ import annotations

from typing import ClassVar


class ServingError(Exception):
    """Root of every error this project raises on purpose."""

    http_status: ClassVar[int] = 500
    grpc_code: ClassVar[str] = "INTERNAL"
    reason: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str | int]:
        """The body a front end answers with."""
        return {"error": type(self).__name__, "reason": self.reason, "message": self.message}


class BadInput(ServingError):
    """The request itself is wrong; retrying it unchanged cannot succeed."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"
    reason = "bad_input"


class EmptyInput(BadInput):
    reason = "empty"


class ImageDecodeError(BadInput):
    """Bytes that are not an image of a supported format, or a truncated/corrupt one."""

    http_status = 422
    reason = "undecodable"


class UnusableUpload(BadInput):
    """A well-formed upload of training data none of which can be used (not a zip archive,
    or every image refused): each refusal is named in the message."""

    http_status = 422
    reason = "unusable"


class UnsupportedMediaType(BadInput):
    http_status = 415
    reason = "media_type"


class PayloadTooLarge(BadInput):
    """A body, image count or image size beyond a configured limit."""

    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"
    reason = "too_large"


class ImageTooLarge(PayloadTooLarge):
    """Declared pixel dimensions beyond the pixel cap, refused before decoding."""

    reason = "too_many_pixels"


class InvalidTensor(BadInput):
    """A raw tensor whose dtype, shape or element count does not match the model input."""

    reason = "bad_tensor"


class NotFound(ServingError):
    """An unknown model or variant; the message names what exists."""

    http_status = 404
    grpc_code = "NOT_FOUND"
    reason = "not_found"


class Overloaded(ServingError):
    """Shed on purpose: the queue or concurrency limit is full."""

    http_status = 429
    grpc_code = "UNAVAILABLE"
    reason = "shed"


class DeadlineExceeded(ServingError):
    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"
    reason = "timeout"


class NotReady(ServingError):
    http_status = 503
    grpc_code = "UNAVAILABLE"
    reason = "not_ready"


class ModelLoadError(ServingError):
    """A model file or its companion files cannot be loaded; the message names the file."""

    reason = "model_load"


class RepositoryError(ServingError):
    """A model repository entry that is malformed or contradicts itself."""

    reason = "repository"


class ModelImportError(ServingError):
    """A model offered for import that is not an image classifier or contradicts its spec."""

    http_status = 422
    reason = "import"


class AccuracyGateFailed(ServingError):
    """An INT8 variant lost too much accuracy and was not published."""

    http_status = 422
    reason = "accuracy_gate"


class RegistryError(ServingError):
    """The model registry cannot be reached, or it and the model repository disagree."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    reason = "registry"


class Conflict(ServingError):
    """A state change that contradicts the current state (a rollout already in progress)."""

    http_status = 409
    grpc_code = "FAILED_PRECONDITION"
    reason = "conflict"


class Unauthorized(ServingError):
    """A state-changing request without the admin credential."""

    http_status = 401
    grpc_code = "UNAUTHENTICATED"
    reason = "unauthorized"


class Forbidden(ServingError):
    """A state-changing request with a wrong admin credential, or none configured."""

    http_status = 403
    grpc_code = "PERMISSION_DENIED"
    reason = "forbidden"


class NotComputed(Conflict):
    """Something asked for that exists only once computed: a drift check with no run yet, or
    with too few predictions in its window."""

    reason = "not_computed"


class TooFewRows(NotComputed):
    """A drift check's window with fewer answered images than it needs to judge."""

    reason = "too_few_rows"
