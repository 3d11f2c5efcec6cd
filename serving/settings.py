"""Typed settings of the BentoML front end.

One environment prefix, `IMGSERVE_` (shared with `runners.settings.BackendSettings`).
Precedence: explicit arguments > environment > `serving.toml` in the working directory >
the defaults below. Batching itself (max batch size, max latency, queue bound) is not here:
the model repository's `config.pbtxt` is its single source of truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from runners.preprocessing import ImageLimits
from runners.settings import REPO_ROOT, ProjectSettings


class ServingSettings(ProjectSettings):
    """What the BentoML service serves and the limits it enforces."""

    repository: Path = Field(
        default=REPO_ROOT / "model_repository", description="Model repository root."
    )
    models: tuple[str, ...] = Field(
        default=("digits",), min_length=1, description="Model families to serve."
    )
    batching: bool = Field(
        default=True,
        description="False serves every model one request at a time (max batch size 1, "
        "no batching delay), overriding config.pbtxt: for comparisons.",
    )
    default_model: str | None = Field(
        default=None, description="Family used when a request names none; None: the first."
    )
    default_variant: Literal["fp32", "bf16", "int8"] = Field(
        default="fp32", description="Variant used when a request names none."
    )
    runner_workers: int = Field(
        default=1, ge=1, description="Replicas (processes) of each variant's runner service."
    )
    entry_workers: int = Field(
        default=1, ge=1, description="Processes of the entry service (HTTP, decode, validate)."
    )
    top_k: int = Field(default=5, ge=1, description="Labels returned when a request names none.")
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, gt=0, description="Cap on a request body, checked while reading."
    )
    max_images_per_request: int = Field(
        default=64, ge=1, description="Cap on images in one batch request."
    )
    max_pixels: int = Field(
        default=16_000_000, gt=0, description="Cap on declared width x height of one image."
    )
    max_side: int = Field(default=12_000, gt=0, description="Cap on either declared side.")
    max_concurrent_requests: int = Field(
        default=1024,
        ge=1,
        description="Requests inside one entry worker at once; beyond it: 429 at once.",
    )
    # Twice the 50 ms p99 objective, and a floor of 64: a stall on cores shared with the load
    # generator can make every answer of an interval slower than the objective while the load
    # is within capacity, and a count near that load's concurrency would then keep shedding it.
    # A target of twice the objective takes such a stall, and the floor is twice the
    # concurrency of a load well within capacity; under a real overload the standing queue
    # passes the target within a few intervals all the same (bench.overload compares).
    latency_target_ms: float = Field(
        default=100.0,
        ge=0,
        description="Queueing the entry worker tolerates: under a standing queue (the fastest "
        "answer of a 100 ms interval slower than this) it admits answers/s x target / 2 "
        "requests at once, below max_concurrent_requests (serving.admission); "
        "0: max_concurrent_requests alone.",
    )
    min_concurrent_requests: int = Field(
        default=64,
        ge=1,
        description="The latency bound never admits fewer at once: a load this concurrent is "
        "within capacity and is not shed when shared cores slow the worker down.",
    )
    early_shedding: bool = Field(
        default=True,
        description="Refuse classify requests over the admission limit before BentoML's "
        "middleware stack (serving.shedding); False: at admission only, for comparisons.",
    )
    request_timeout_s: float = Field(
        default=10.0, gt=0, description="Deadline of one request; past it the answer is 504."
    )
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After sent with a 429.")
    admin_token: SecretStr | None = Field(
        default=None,
        description="The credential of state-changing endpoints (Authorization: Bearer ...); "
        "None with no admin_token_file: those endpoints answer 403.",
    )
    admin_token_file: Path | None = Field(
        default=None, description="A file holding the admin credential (a mounted secret)."
    )
    console_session_s: float = Field(
        default=8 * 3600.0,
        gt=0,
        description="Lifetime of a web console login (its session cookie), in seconds.",
    )
    console_open: bool = Field(
        default=True,
        description="The console's read-only pages need no login; False: every page does.",
    )
    console_secure_cookie: bool = Field(
        default=False,
        description="Mark the console's session cookie Secure (set it when served over HTTPS).",
    )
    rollout_controller: bool = Field(
        default=True, description="Judge rollouts in this server and promote or roll back."
    )
    drain_delay_s: float = Field(
        default=0.0,
        ge=0,
        description="After SIGTERM, seconds the entry keeps serving with /readyz at 503 before "
        "it refuses new requests and drains (a Kubernetes preStop sleep plays this part).",
    )
    trace_requests: bool = Field(
        default=False,
        description="BentoML's OpenTelemetry span per request (costs CPU; set an exporter too).",
    )
    inline_decode_bytes: int = Field(
        default=64 * 1024,
        ge=0,
        description="Bodies up to this size decode on the event loop; larger ones in a thread.",
    )

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(
            max_bytes=self.max_body_bytes, max_pixels=self.max_pixels, max_side=self.max_side
        )
