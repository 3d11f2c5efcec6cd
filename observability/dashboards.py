"""The Grafana dashboards, built with grafana-foundation-sdk: the one source of grafana/.

Run `python -m observability.dashboards` to regenerate grafana/dashboards/*.json (committed,
so Grafana provisioning and the Kubernetes ConfigMap read plain files); `--check` fails when
the committed files differ from this code. Every panel query reads only metrics the project
exports, and an integration test evaluates each one against a real Prometheus.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard, heatmap, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "grafana" / "dashboards"
DATASOURCE_UID = "imgserve-prometheus"
DATASOURCE = DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
SEL = 'model=~"$model", variant=~"$variant", backend=~"$backend", instance=~"$instance"'
# Triton's series carry no instance-independent backend for nv_*; its models are named
# "<family>_<variant>".
TRITON_SEL = 'model=~"$model", variant=~"$variant", backend=~"$backend"'
TRITON_BY_NAME = '{model=~"($model)_($variant)"}'
RATE = "$__rate_interval"
# The detections-per-image bucket of images with no box: prometheus_client writes the bound
# 0 as "0.0", Prometheus 3 normalises it to "0".
EMPTY_LE = "0|0.0"


def _query(expr: str, legend: str, ref: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)


def _timeseries(
    title: str, unit: str, queries: list[tuple[str, str]], description: str, width: int = 12
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .height(8)
        .span(width)
    )
    for index, (expr, legend) in enumerate(queries):
        panel = panel.with_target(_query(expr, legend, chr(ord("A") + index)))
    return panel


def _stat(title: str, unit: str, expr: str, description: str) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .height(4)
        .span(6)
        .with_target(_query(expr, title, "A"))
    )


def _variable(name: str, metric: str) -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable(name)
        .label(name)
        .datasource(DATASOURCE)
        .query(f"label_values({metric}, {name})")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def _with_variables(board: dashboard.Dashboard) -> dashboard.Dashboard:
    for name in ("model", "variant", "backend", "instance"):
        board = board.with_variable(_variable(name, "imgserve_requests_total"))
    return board


def _quantile(q: float, metric: str, by: str = "", selector: str = SEL) -> str:
    group = f"le, {by}" if by else "le"
    return (
        f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{selector}}}[{RATE}])))"
    )


def _ratio(outcome: str, by: str) -> str:
    return (
        f'sum by ({by}) (rate(imgserve_requests_total{{{SEL}, outcome=~"{outcome}"}}[{RATE}]))'
        f" / sum by ({by}) (rate(imgserve_requests_total{{{SEL}}}[{RATE}]))"
    )


def serving_overview() -> dashboard.Dashboard:
    by = "model, variant"
    board = (
        dashboard.Dashboard("Image serving: overview")
        .uid("imgserve-overview")
        .tags(["imgserve", "generated"])
        .refresh("10s")
        .time("now-30m", "now")
    )
    board = _with_variables(board).annotation(
        dashboard.AnnotationQuery()
        .name("Rollout decisions")
        .datasource(DATASOURCE)
        .enable(True)
        .icon_color("orange")
        .expr(
            "sum by (model, decision, reason) (increase(imgserve_rollout_decisions_total"
            '{model=~"$model"}[1m])) > 0'
        )
    )
    board = (
        board.with_row(dashboard.Row("Now"))
        .with_panel(_stat(
            "Requests/s", "reqps", f"sum(rate(imgserve_requests_total{{{SEL}}}[{RATE}]))",
            "All classify requests, every outcome.",
        ))
        .with_panel(_stat(
            "p99 latency", "ms", _quantile(0.99, "imgserve_request_duration_ms"),
            "End-to-end inside the entry service. Target: 50 ms.",
        ))
        .with_panel(_stat(
            "Error ratio", "percentunit", _ratio("error|timeout", "job"),
            "Server errors and timeouts over all requests (bad input is not an error).",
        ))
        .with_panel(_stat(
            "In flight", "short", f"sum(imgserve_in_flight_requests{{{SEL}}})",
            "Requests inside the service now: the Kubernetes autoscaling signal.",
        ))
        .with_row(dashboard.Row("Traffic and latency"))
        .with_panel(_timeseries(
            "Throughput by model and variant", "reqps",
            [(f"sum by ({by}) (rate(imgserve_requests_total{{{SEL}}}[{RATE}]))",
              "{{model}} {{variant}}")],
            "Requests per second, every outcome.",
        ))
        .with_panel(_timeseries(
            "Latency p50 / p95 / p99", "ms",
            [(_quantile(q, "imgserve_request_duration_ms", by), f"p{int(q * 100)} {{{{variant}}}}")
             for q in (0.5, 0.95, 0.99)],
            "End-to-end request latency from the histogram, per variant.",
        ))
        .with_panel(_timeseries(
            "Error and shed ratios", "percentunit",
            [(_ratio("error|timeout", by), "errors {{variant}}"),
             (_ratio("shed", by), "shed {{variant}}"),
             (_ratio("bad_input", by), "bad input {{variant}}")],
            "Errors (5xx, timeouts), shed (429) and refused bad input, as shares of requests.",
        ))
        .with_panel(_timeseries(
            "In-flight requests", "short",
            [(f"sum by (instance) (imgserve_in_flight_requests{{{SEL}}})", "{{instance}}")],
            "Requests inside each replica right now.",
        ))
        .with_row(dashboard.Row("Batching"))
        .with_panel(
            heatmap.Panel()
            .title("Batch size distribution")
            .description("Images per batch run by the runner services.")
            .datasource(DATASOURCE)
            .height(8)
            .span(12)
            .with_target(_query(
                f"sum by (le) (rate(imgserve_batch_size_bucket{{{SEL}}}[{RATE}]))", "{{le}}", "A"
            ).format(PromQueryFormat.HEATMAP))
        )
        .with_panel(_timeseries(
            "Mean batch size and queue wait", "short",
            [(f"sum by ({by}) (rate(imgserve_batch_size_sum{{{SEL}}}[{RATE}])) / "
              f"sum by ({by}) (rate(imgserve_batch_size_count{{{SEL}}}[{RATE}]))",
              "batch {{variant}}"),
             (_quantile(0.99, "imgserve_queue_wait_ms", by), "queue wait p99 ms {{variant}}")],
            "Mean images per batch, and the p99 wait (ms) before a request's batch is sent.",
        ))
        .with_panel(_timeseries(
            "Inference and preprocessing p99", "ms",
            [(_quantile(0.99, "imgserve_inference_ms", by), "inference {{variant}}"),
             (_quantile(0.99, "imgserve_preprocess_ms", by), "decode {{variant}}")],
            "Time of one batch inside the engine, and of decoding one image.",
        ))
        .with_row(dashboard.Row("Variants (FP32, BF16, INT8), replicas"))
        .with_panel(_timeseries(
            "Variants: p99 latency", "ms",
            [(_quantile(0.99, "imgserve_request_duration_ms", "variant"), "{{variant}}")],
            "FP32, BF16 (where offered) and INT8 side by side.",
        ))
        .with_panel(_timeseries(
            "Variants: throughput", "reqps",
            [(f'sum by (variant) (rate(imgserve_requests_total{{{SEL}, outcome="ok"}}[{RATE}]))',
              "{{variant}}")],
            "Successful requests per second per variant.",
        ))
        .with_panel(_timeseries(
            "Throughput per replica", "reqps",
            [(f"sum by (instance) (rate(imgserve_requests_total{{{SEL}}}[{RATE}]))",
              "{{instance}}")],
            "Each scraped replica separately.",
        ))
        .with_row(dashboard.Row("Triton (HTTP and gRPC)"))
        .with_panel(_timeseries(
            "Triton: successful inferences per model", "reqps",
            [(f"sum by (model) (rate(nv_inference_request_success{TRITON_BY_NAME}[{RATE}]))",
              "{{model}}")],
            "Triton's own counter (nv_inference_request_success) per served model.",
        ))
        .with_panel(_timeseries(
            "Triton: latency p50 / p99, queue wait p99, batch compute p99", "ms",
            [(f'max by (model) (nv_inference_request_summary_us{{model=~"($model)_($variant)", '
              f'quantile="{q}"}}) / 1000', f"p{int(float(q) * 100)} {{{{model}}}}")
             for q in ("0.5", "0.99")]
            + [('max by (model) (nv_inference_queue_summary_us{model=~"($model)_($variant)", '
                'quantile="0.99"}) / 1000', "queue wait p99 {{model}}"),
               (_quantile(0.99, "imgserve_triton_compute_ms", "variant", TRITON_SEL),
                "batch compute p99 {{variant}}")],
            "Receipt to response and dynamic-batcher queue wait from Triton's own latency "
            "summaries (the worst server's quantile), and the compute of one batch from the "
            "launcher's histogram.",
        ))
        .with_panel(_timeseries(
            "Triton: mean batch size", "short",
            [(f"sum by (model) (rate(nv_inference_count{TRITON_BY_NAME}[{RATE}])) / "
              f"sum by (model) (rate(nv_inference_exec_count{TRITON_BY_NAME}[{RATE}]))",
              "{{model}}")],
            "Inferences per model execution: the dynamic batcher's batch size.",
        ))
        .with_row(dashboard.Row("Model versions and rollouts"))
        .with_panel(_timeseries(
            "Requests/s per model version", "reqps",
            [('sum by (model, version, outcome) (rate(imgserve_version_requests_total'
              f'{{model=~"$model", variant=~"$variant", instance=~"$instance"}}[{RATE}]))',
              "{{model}} v{{version}} {{outcome}}")],
            "Answers by the version that produced them: during a rollout, the champion and "
            "the challenger's canary share side by side (decisions are annotations).",
        ))
        .with_panel(_timeseries(
            "p99 latency per model version", "ms",
            [(_quantile(0.99, "imgserve_version_request_duration_ms", "model, version",
                        'model=~"$model", variant=~"$variant", instance=~"$instance"'),
              "{{model}} v{{version}}")],
            "What the rollout controller compares: the challenger's p99 against the champion's.",
        ))
        .with_panel(_timeseries(
            "Predictions by class", "reqps",
            [(f"sum by (label) (rate(imgserve_predictions_total{{{SEL}}}[{RATE}]))", "{{label}}")],
            "Top-1 predictions per second by class: a shift here is drift.",
        ))
        .with_row(dashboard.Row("Detection"))
        .with_panel(_timeseries(
            "Detections per image", "short",
            [(f"sum by ({by}) (rate(imgserve_detections_per_image_sum{{{SEL}}}[{RATE}])) / "
              f"sum by ({by}) (rate(imgserve_detections_per_image_count{{{SEL}}}[{RATE}]))",
              "mean {{model}} {{variant}}"),
             (_quantile(0.9, "imgserve_detections_per_image", by), "p90 {{model}} {{variant}}")],
            "Boxes a detector answers per image (after its score threshold and NMS): a "
            "change with the same clients is a change in what the images hold, or drift.",
        ))
        .with_panel(_timeseries(
            "Images with no detection", "percentunit",
            [(f"sum by ({by}) (rate(imgserve_detections_per_image_bucket{{{SEL}, "
              f'le=~"{EMPTY_LE}"}}[{RATE}])) / '
              f"sum by ({by}) (rate(imgserve_detections_per_image_count{{{SEL}}}[{RATE}]))",
              "{{model}} {{variant}}")],
            "Share of a detector's images answered with no box at all.",
        ))
        .with_panel(
            heatmap.Panel()
            .title("Detection score distribution")
            .description("Scores of every answered box (at or above the model's score "
                         "threshold): a detector growing unsure shifts this down.")
            .datasource(DATASOURCE)
            .height(8)
            .span(12)
            .with_target(_query(
                f"sum by (le) (rate(imgserve_detection_scores_bucket{{{SEL}}}[{RATE}]))",
                "{{le}}", "A",
            ).format(PromQueryFormat.HEATMAP))
        )
        .with_panel(_timeseries(
            "Median detection score by label", "percentunit",
            [(_quantile(0.5, "imgserve_detection_scores", "model, label"),
              "{{model}} {{label}}")],
            "Each label's median box score: one label falling alone is that class drifting.",
        ))
        .with_row(dashboard.Row("Drift"))
        .with_panel(_timeseries(
            "Drift score per feature (1 = threshold)", "none",
            [('max by (model, feature) (imgserve_drift_score'
              '{model=~"$model", instance=~"$instance"})', "{{model}} {{feature}}")],
            "Each feature's drift statistic over its threshold in the last scheduled check "
            "(monitoring.drift: PSI for the class, Wasserstein for confidence, size and "
            "pixels); 1 or more is drift, and ImgserveDriftDetected fires when it lasts. "
            "GET /v1/drift/report shows the check's Evidently report.",
            width=24,
        ))
    )  # fmt: skip
    return board


def load_test() -> dashboard.Dashboard:
    by = "instance"
    board = (
        dashboard.Dashboard("Image serving: load test")
        .uid("imgserve-load-test")
        .tags(["imgserve", "generated", "load-test"])
        .refresh("5s")
        .time("now-15m", "now")
    )
    board = _with_variables(board)
    return (
        board.with_row(dashboard.Row("Offered load and capacity"))
        .with_panel(_timeseries(
            "Answered per second by outcome", "reqps",
            [(f"sum by (outcome) (rate(imgserve_requests_total{{{SEL}}}[{RATE}]))",
              "{{outcome}}")],
            "ok vs shed (429) vs bad input vs errors while the load steps up.",
        ))
        .with_panel(_timeseries(
            "p99 latency per replica", "ms",
            [(_quantile(0.99, "imgserve_request_duration_ms", by), "{{instance}}")],
            "Where the p99 target breaks is the capacity of the configuration.",
        ))
        .with_panel(_timeseries(
            "Shed ratio per replica", "percentunit", [(_ratio("shed", by), "{{instance}}")],
            "Share of requests refused with 429: above capacity this rises, errors must not.",
        ))
        .with_panel(_timeseries(
            "In flight and queue wait per replica", "short",
            [(f"sum by ({by}) (imgserve_in_flight_requests{{{SEL}}})", "in flight {{instance}}"),
             (_quantile(0.99, "imgserve_queue_wait_ms", by), "queue wait p99 ms {{instance}}")],
            "Queueing grows before latency does.",
        ))
        .with_panel(_timeseries(
            "Mean batch size per replica", "short",
            [(f"sum by ({by}) (rate(imgserve_batch_size_sum{{{SEL}}}[{RATE}])) / "
              f"sum by ({by}) (rate(imgserve_batch_size_count{{{SEL}}}[{RATE}]))",
              "{{instance}}")],
            "Adaptive batching at work: batches grow with load.",
        ))
        .with_panel(_timeseries(
            "Error ratio per replica", "percentunit",
            [(_ratio("error|timeout", by), "{{instance}}")],
            "Must stay at zero up to capacity.",
        ))
    )  # fmt: skip


DASHBOARDS: dict[str, Callable[[], dashboard.Dashboard]] = {
    "serving-overview": serving_overview,
    "load-test": load_test,
}


def render(name: str) -> str:
    built = DASHBOARDS[name]().build()
    # Grafana needs a unique id per panel (rows included); the builders leave them unset.
    number = 0
    for panel in built.panels or []:
        number += 1
        panel.id_val = number
        for inner in getattr(panel, "panels", None) or []:
            number += 1
            inner.id_val = number
    text: str = JSONEncoder(sort_keys=True, indent=2).encode(built)
    return text + "\n"


def panels(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel of a dashboard JSON document, rows included."""
    found = []
    for panel in document.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the files differ")
    args = parser.parse_args(argv)
    stale = []
    for name in DASHBOARDS:
        path = OUT / f"{name}.json"
        text = render(name)
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        sys.stderr.write(
            "out of date (run python -m observability.dashboards): " + ", ".join(stale) + "\n"
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
