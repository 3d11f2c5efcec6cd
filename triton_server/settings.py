"""Typed settings of the Triton front end.

One environment prefix, `IMGSERVE_` (shared with the other settings classes), so
`IMGSERVE_TRITON_HTTP_PORT=9000` moves the HTTP port. Precedence: explicit arguments >
environment > `serving.toml` in the working directory > the defaults below. Batching (max batch
size, preferred sizes, queue delay, queue bound) and the instance count are not here: each
model's `config.pbtxt` is their single source of truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from runners.preprocessing import ImageLimits
from runners.settings import REPO_ROOT, ProjectSettings


class TritonSettings(ProjectSettings):
    """What the Triton server serves, where it listens, and what it records."""

    repository: Path = Field(
        default=REPO_ROOT / "model_repository", description="Model repository root."
    )
    models: tuple[str, ...] = Field(
        default=(), description="Model families to serve; empty serves every family."
    )
    triton_mode: Literal["native", "pytriton"] = Field(
        default="native",
        description="native: batches run in tritonserver's Python backend stubs, no proxy "
        "(triton_server/native.py); pytriton: in this process behind PyTriton's proxy.",
    )
    triton_queue_bound: Literal["stub", "triton"] = Field(
        default="stub",
        description="Native mode: who keeps config.pbtxt's max_queue_size: the stub "
        "(triton_server/queue_guard.py), or tritonserver's queue policy, which stalls "
        "tritonserver 2.51's batcher for 500 ms at a time under load.",
    )
    decode_threads: int = Field(
        default=2,
        ge=1,
        description="Threads that decode one batch's images, when they are large enough to "
        "share out (runners/decoding.py): the batch waits for its decoding, and a core "
        "idles while one thread decodes.",
    )
    batching: bool = Field(
        default=True,
        description="False serves every model one request at a time (max batch size 1, "
        "no batching delay), overriding config.pbtxt: for comparisons.",
    )
    triton_host: str = Field(
        default="127.0.0.1", description="Address every port binds to; 0.0.0.0 for all."
    )
    triton_http_port: int = Field(default=8000, ge=1, le=65535, description="KServe v2 HTTP.")
    triton_grpc_port: int = Field(default=8001, ge=1, le=65535, description="KServe v2 gRPC.")
    triton_metrics_port: int = Field(
        default=8002, ge=1, le=65535, description="Triton's own Prometheus metrics (nv_*)."
    )
    latency_metrics_port: int = Field(
        default=8003,
        ge=0,
        le=65535,
        description="The launcher's own metrics: rollout decisions, and in PyTriton mode the "
        "batch histograms (imgserve_triton_*); 0 turns them off.",
    )
    shutdown_timeout_s: int = Field(
        default=10,
        ge=0,
        description="After SIGTERM, wait at most this long for the admitted requests to be "
        "answered and the models unloaded (the drain), then stop.",
    )
    drain_delay_s: float = Field(
        default=0.0,
        ge=0,
        description="After SIGTERM, seconds the server keeps serving with /v2/health/ready "
        "false before it refuses new requests and drains (a Kubernetes preStop sleep plays "
        "this part). The same IMGSERVE_DRAIN_DELAY_S as the BentoML entry's.",
    )
    rollout_controller: bool = Field(
        default=True, description="Judge rollouts in this server and promote or roll back."
    )
    max_image_bytes: int = Field(
        default=8 * 1024 * 1024, gt=0, description="Cap on one encoded image."
    )
    max_pixels: int = Field(
        default=16_000_000, gt=0, description="Cap on declared width x height of one image."
    )
    max_side: int = Field(default=12_000, gt=0, description="Cap on either declared side.")

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(
            max_bytes=self.max_image_bytes, max_pixels=self.max_pixels, max_side=self.max_side
        )
