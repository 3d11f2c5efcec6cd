"""Server-side figures of one measured window, read from the Prometheus that scraped it.

Mean batch size and mean queue wait, as the recording rules define them
(`prometheus/rules/recording.yml`), but over exactly the window of one step of the load:
`increase()` of the histograms' sums and counts, evaluated at the window's end.
"""

from __future__ import annotations

import math

import httpx

# (numerator, denominator, scale) of each figure, per server kind.
QUERIES = {
    "bentoml": {
        "batch_size": ("imgserve_batch_size_sum", "imgserve_batch_size_count", 1.0),
        "queue_wait_ms": ("imgserve_queue_wait_ms_sum", "imgserve_queue_wait_ms_count", 1.0),
    },
    "triton": {
        "batch_size": ("nv_inference_count", "nv_inference_exec_count", 1.0),
        # Triton's own cumulative queue time (us) over its successful requests.
        "queue_wait_ms": ("nv_inference_queue_duration_us", "nv_inference_request_success", 1e-3),
    },
}


def _selector(metric: str, model: str, variant: str) -> str:
    """Triton's own nv_* counters name the model "<family>_<variant>"; the project's
    histograms (BentoML's and the Triton launcher's) label family and variant apart."""
    if metric.startswith("nv_"):
        return f'{{model="{model}_{variant}"}}'
    return f'{{model="{model}",variant="{variant}"}}'


def window_figures(  # noqa: PLR0917 (a window and what it measured read best in order)
    prometheus_url: str,
    server: str,
    model: str,
    variant: str,
    start_unix: float,
    end_unix: float,
) -> dict[str, float | None]:
    """Mean batch size and queue wait (ms) over [start, end]; None where nothing was seen."""
    window_ms = max(1000, int((end_unix - start_unix) * 1000))
    out: dict[str, float | None] = {}
    with httpx.Client(base_url=prometheus_url, timeout=10) as client:
        for figure, (top, bottom, scale) in QUERIES.get(server, {}).items():
            expr = (
                f"{scale} * sum(increase({top}{_selector(top, model, variant)}[{window_ms}ms]))"
                f" / sum(increase({bottom}{_selector(bottom, model, variant)}"
                f"[{window_ms}ms]))"
            )
            answer = client.get("/api/v1/query", params={"query": expr, "time": end_unix}).json()
            if answer.get("status") != "success":
                raise RuntimeError(f"Prometheus refused {expr}: {answer}")
            result = answer["data"]["result"]
            value = float(result[0]["value"][1]) if result else math.nan
            out[figure] = None if math.isnan(value) else value
    return out
