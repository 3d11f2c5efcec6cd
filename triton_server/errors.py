"""Per-request errors through PyTriton, with the status each ServingError carries.

PyTriton (0.7) fails a whole dynamic batch when its inference callable raises, and Triton
answers that as HTTP 500 / gRPC INTERNAL with a server traceback in the message. A bad image
must fail only its own request, with 400 / INVALID_ARGUMENT and a plain message. So the
callable never raises: a failed request's response carries one reserved output,
`ERROR_OUTPUT` = [triton_code, message], and the proxy model that PyTriton runs inside
Triton's Python backend stub (patched in `triton_server.pytriton_compat`) turns that output
into `pb_utils.InferenceResponse(error=TritonError(message, code))` for that request alone.
"""

from __future__ import annotations

import numpy as np

from runners.errors import ServingError

ERROR_OUTPUT = "__imgserve_error__"

# Triton's error codes by the HTTP status a ServingError carries. Triton answers INVALID_ARG
# as HTTP 400 / gRPC INVALID_ARGUMENT and UNAVAILABLE as 503 / UNAVAILABLE; it has no code for
# 413, 415 or 422, so every client-side error is INVALID_ARG.
_UNAVAILABLE = frozenset({429, 503})


def triton_code(error: ServingError) -> str:
    """The `pb_utils.TritonError` code name for an error."""
    if error.http_status in _UNAVAILABLE:
        return "UNAVAILABLE"
    if error.http_status == 404:
        return "NOT_FOUND"
    if 400 <= error.http_status < 500:
        return "INVALID_ARG"
    return "INTERNAL"


def error_output(error: ServingError) -> dict[str, np.ndarray]:
    """The response of one failed request: the reserved output and nothing else."""
    payload = np.empty(2, dtype=np.object_)
    payload[0] = triton_code(error).encode()
    payload[1] = error.message.encode("utf-8", "replace")
    return {ERROR_OUTPUT: payload}
