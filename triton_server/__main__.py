"""Serve the model repository through Triton Inference Server (PyTriton's `tritonserver`).

python -m triton_server [--http-port 8000] [--grpc-port 8001] [--metrics-port 8002]
                        [--latency-metrics-port 8003] [--host 127.0.0.1]
                        [--repository model_repository] [--models digits ...]
                        [--mode native|pytriton]

Flags override `IMGSERVE_*` environment variables, which override `serving.toml`.
SIGTERM drains (not ready, `IMGSERVE_DRAIN_DELAY_S` more serving, new requests refused, the
admitted ones answered) and exits 0; SIGINT (Ctrl+C) stops at once.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from runners.errors import ServingError
from triton_server.server import TritonFrontEnd
from triton_server.settings import TritonSettings

log = logging.getLogger("triton_server")

_FLAGS = {
    "host": "triton_host",
    "http_port": "triton_http_port",
    "grpc_port": "triton_grpc_port",
    "metrics_port": "triton_metrics_port",
    "latency_metrics_port": "latency_metrics_port",
    "repository": "repository",
    "models": "models",
    "mode": "triton_mode",
}


def parse_args(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m triton_server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", help="address every port binds to (0.0.0.0 for all)")
    parser.add_argument("--http-port", type=int, help="KServe v2 HTTP port (8000)")
    parser.add_argument("--grpc-port", type=int, help="KServe v2 gRPC port (8001)")
    parser.add_argument("--metrics-port", type=int, help="Triton's nv_* metrics port (8002)")
    parser.add_argument(
        "--latency-metrics-port", type=int, help="the launcher's metrics port (8003; 0: off)"
    )
    parser.add_argument("--repository", type=Path, help="model repository root")
    parser.add_argument("--models", nargs="+", help="model families to serve (default: all)")
    parser.add_argument(
        "--mode",
        choices=("native", "pytriton"),
        help="native (default): batches run in tritonserver's Python backend stubs; "
        "pytriton: in this process behind PyTriton's proxy",
    )
    args = vars(parser.parse_args(argv))
    return {_FLAGS[k]: v for k, v in args.items() if v is not None}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides = parse_args(argv)
    if "models" in overrides:
        overrides["models"] = tuple(overrides["models"])
    try:
        server = TritonFrontEnd(TritonSettings(**overrides))

        def terminate(_signum: int, _frame: FrameType | None) -> None:
            # Serving: drain (triton_server.drain), then stop; a second SIGTERM changes
            # nothing. Still loading: stop at once, as Ctrl+C (SIGINT) always does.
            if server.serving:
                server.request_drain()
                return
            server.remember_shared_memory()  # what PyTriton's stop may leave behind
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, terminate)
        with server:
            server.wait()
    except ServingError as exc:
        log.error("%s", exc.message)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
