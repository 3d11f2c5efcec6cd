"""Render the figures of docs/performance.md from the benchmarks' committed results.

    python -m bench.docs                 # render from docs/results/ (make docs)
    python -m bench.docs --take results  # first copy a run's results/bench-*.json there
    python -m bench.docs --check         # exit 1 when a page differs from its rendering

Each benchmark writes one JSON file (`bench.results`, or its own report model) with the CPU it
ran on. docs/performance.md holds one block per benchmark between `<!-- results: NAME -->` and
`<!-- /results -->`, and the README one `headline` block of a few figures; docs/serving.md's
`<!-- generated: settings -->` and `endpoints` blocks come from the settings classes and the
OpenAPI document. Everything inside a block is rendered, everything outside is prose. A
figure on either page is therefore always one a command printed, with its command and machine.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runners.settings import REPO_ROOT

DOCS = REPO_ROOT / "docs"
COMMITTED = DOCS / "results"
PAGE = DOCS / "performance.md"
README = REPO_ROOT / "README.md"
SERVING = DOCS / "serving.md"
PLOTS = DOCS / "performance"
BLOCK = re.compile(
    r"(<!-- (?:results|generated): (?P<name>[a-z]+) -->\n)(?P<body>.*?)"
    r"(<!-- /(?:results|generated) -->)",
    re.S,
)

Result = dict[str, Any]
# The served benchmark's targets the README's headline shows (docs/performance.md has all).
HEADLINE_SERVED = (
    "service / plain baseline (req/s)",
    "service p99 ms",
    "service cold start to ready (s)",
    "triton grpc / service (req/s)",
)


def _met(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def _source(result: Result, command: str) -> str:
    return f"Measured by `{command}` on {result['machine']}."


def raw(result: Result) -> str:
    ratios: dict[tuple[str, str, str], dict[int, float]] = {}
    sizes: set[int] = set()
    for ratio in result["ratios"]:
        key = (ratio["family"], ratio["variant"], ratio["backend"])
        ratios.setdefault(key, {})[ratio["batch_size"]] = ratio["over_fp32"]
        sizes.add(ratio["batch_size"])
    columns = sorted(sizes)
    lines = [
        _source(result, "make bench-raw"),
        "",
        "| model | variant ÷ FP32 | backend | "
        + " | ".join(f"batch {size}" for size in columns)
        + " | file |",
        "| --- | --- | --- | " + " | ".join("---" for _ in columns) + " | --- |",
    ]
    shares = result.get("int8_file_share", {})
    for (family, variant, backend), by_size in sorted(ratios.items()):
        cells = " | ".join(f"{by_size[s]:.2f}×" if s in by_size else "" for s in columns)
        share = shares.get(family) if variant == "int8" else None
        file = f"{share:.0%} of FP32" if share is not None else "the FP32 file"
        lines.append(f"| {family} | {variant.upper()} | {backend} | {cells} | {file} |")
    lines += ["", f"BF16: {result['bf16']}.", ""]
    best: dict[tuple[str, str, str], tuple[int, float]] = {}
    for row in result["rows"]:
        timing = row["timing"]
        key = (row["family"], row["variant"], row["backend"])
        if timing["batch_size"] == 1:
            best[key] = (1, timing["images_per_s"])
    if best:
        lines += [
            "| model | variant | backend | images/s at batch 1 |",
            "| --- | --- | --- | --- |",
        ]
        for (family, variant, backend), (_, speed) in sorted(best.items()):
            lines.append(f"| {family} | {variant} | {backend} | {speed:,.1f} |")
        lines.append("")
    lines.append("![images/s by batch size](performance/bench-raw.png)")
    return "\n".join(lines) + "\n"


def serve(result: Result) -> str:
    lines = [
        _source(result, "make bench-serve"),
        f"{result['users']} Locust users, {result['rounds']} alternating rounds of "
        f"{result['round_s']:g} s, the median round counting.",
        "",
        "| front end | req/s | images/s | p50 ms | p99 ms | errors | shed "
        "| server CPU ms / request |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    cpu = result.get("server_cpu_ms_per_request", {})
    for cell in result["cells"]:
        ms = cpu.get(cell["name"])
        lines.append(
            f"| {cell['name']} | {cell['requests_per_s']:,.0f} | {cell['images_per_s']:,.0f} | "
            f"{cell['p50_ms']:.1f} | {cell['p99_ms']:.1f} | {cell['errors']} | {cell['shed']} | "
            f"{'-' if ms is None else f'{ms:.2f}'} |"
        )
    lines += ["", "| target | measured | wanted | |", "| --- | --- | --- | --- |"]
    for target in result["targets"]:
        lines.append(
            f"| {target['what']} | {target['value']:.2f} | {target['target']} | "
            f"{_met(target['met'])} |"
        )
    return "\n".join(lines) + "\n"


def rollout(result: Result) -> str:
    lines = [
        _source(result, "make bench-rollout"),
        f"{result['clients']} closed-loop clients, {len(result['rounds'])} rounds of a steady "
        f"and a rollout phase of {result['seconds']:g} s each.",
        "",
        "| round | steady req/s | rollout req/s | steady p99 ms | rollout p99 ms | decision |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for i, row in enumerate(result["rounds"], 1):
        lines.append(
            f"| {i} | {row['steady_rps']:,.0f} | {row['rollout_rps']:,.0f} | "
            f"{row['steady_p99_ms']:.1f} | {row['rollout_p99_ms']:.1f} | {row['decision']} |"
        )
    lines += [
        "",
        f"Median: rollout ÷ steady throughput {result['throughput_ratio']:.2f} (target ≥ 0.90: "
        f"{_met(result['throughput_ratio'] >= 0.9)}), p99 {result['p99_ratio']:.2f}× (target ≤ "
        f"1.5: {_met(result['p99_ratio'] <= 1.5)}), answers other than 200: "
        f"{result['answers_not_200']}, every rollout promoted: "
        f"{'yes' if result['every_rollout_promoted'] else 'no'}.",
    ]
    return "\n".join(lines) + "\n"


def predictionlog(result: Result) -> str:
    ratio = result["throughput_ratio"]
    lines = [
        _source(result, "make bench-predictionlog"),
        f"{result['clients']} closed-loop clients, {len(result['rounds'])} alternating rounds "
        f"of {result['seconds']:g} s.",
        "",
        f"Throughput with the log ÷ without: {ratio:.3f} (median; target ≥ 0.95: "
        f"{_met(ratio >= 0.95)}), p99 {result['p99_ratio']:.2f}×; records written "
        f"{result['records_written']:,}, dropped {result['records_dropped']} (target 0: "
        f"{_met(result['records_dropped'] == 0)}), failed {result['records_failed']}; answers "
        f"other than 200: {result['answers_not_200']}.",
    ]
    if "cpu_per_request_ratio" in result:
        cpu = result["cpu_per_request_ratio"]
        lines += [
            "",
            f"Server CPU per answer with the log ÷ without (the kernel's CPU time of each "
            f"server's process tree, the writer included): {cpu:.3f} (median).",
        ]
    return "\n".join(lines) + "\n"


def overload(result: Result) -> str:
    lines = [
        _source(result, "make bench-overload"),
        f"Offered {result['factor']:g}× the measured capacity for {result['seconds']:g} s per "
        "round; medians of the rounds.",
        "",
        "| admission | accepted req/s | shed ratio | server p99 ms | client p99 ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    for summary in result["summaries"]:
        median = summary["median"]
        lines.append(
            f"| {summary['mode']} | {median.get('accepted_per_s', 0):,.0f} | "
            f"{median.get('shed_ratio', 0):.0%} | {median['server_p99_ms']:,.0f} | "
            f"{median['client_p99_ms']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def integrity(result: Result) -> str:
    lines = [
        _source(result, "make bench-integrity"),
        f"`{result['model']}` on Triton ({result.get('mode', 'pytriton')} mode), "
        f"{result['concurrency']} concurrent clients a protocol, "
        "every answer compared with its own image's.",
        "",
        "| protocol | requests | right | wrong | errors | req/s | slowest answer ms "
        "| 0 wrong, 0 errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["protocols"]:
        slowest = row.get("slowest_ms")
        lines.append(
            f"| {row['protocol']} | {row['requests']:,} | {row['right']:,} | {row['wrong']} | "
            f"{row['errors']} | {row['requests_per_s']:,.0f} | "
            f"{'-' if slowest is None else f'{slowest:,.0f}'} | "
            f"{_met(row['wrong'] == 0 and row['errors'] == 0)} |"
        )
    return "\n".join(lines) + "\n"


def tritonmodes(result: Result) -> str:
    lines = [
        _source(result, "python -m bench.triton_modes"),
        f"`digits_fp32` on Triton, {result['concurrency']} concurrent clients a protocol, the "
        "median round; the server's CPU from the kernel's CPU time of its whole process tree "
        "(launcher, tritonserver, stubs).",
        "",
        "| mode | instances | queue bound kept by | protocol | req/s | server CPU ms / request "
        "| slowest answer ms | wrong or failed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["cells"]:
        lines.append(
            f"| {row['mode']} | {row['instances']} | {row.get('queue_bound', 'triton')} | "
            f"{row['protocol']} | {row['requests_per_s']:,.0f} | "
            f"{row['cpu_ms_per_request']:.2f} | {row.get('slowest_ms', 0):,.0f} | "
            f"{row['wrong_or_failed']} |"
        )
    return "\n".join(lines) + "\n"


def _best_ratio(raw: Result, family: str, variant: str, size: int) -> tuple[float, str] | None:
    found = [
        (r["over_fp32"], r["backend"])
        for r in raw["ratios"]
        if (r["family"], r["variant"], r["batch_size"]) == (family, variant, size)
    ]
    return max(found) if found else None


def headline(folder: Path) -> str:
    """The README's few figures, each linked to the section that says how it is measured."""
    rows = []
    raw_result = load("raw", folder)
    if raw_result is not None:
        for variant in ("int8", "bf16"):
            found = [_best_ratio(raw_result, "resnet50", variant, size) for size in (1, 8, 32)]
            cells = [cell for cell in found if cell is not None]
            if len(cells) == len(found):
                figures = " / ".join(f"{ratio:.2f}×" for ratio, _ in cells)
                backends = sorted({backend for _, backend in cells})
                rows.append(
                    f"| ResNet-50 class, {variant.upper()} ÷ FP32 images/s, batch 1 / 8 / 32 "
                    f"({', '.join(backends)}) | {figures} | "
                    "[raw benchmark](docs/performance.md#raw-benchmark) |"
                )
    rollout_result = load("rollout", folder)
    if rollout_result is not None:
        rows.append(
            f"| A rollout under load: throughput ÷ steady, p99 ÷ steady | "
            f"{rollout_result['throughput_ratio']:.2f}, {rollout_result['p99_ratio']:.2f}× | "
            "[rollout](docs/performance.md#a-rollout-under-load) |"
        )
    log_result = load("predictionlog", folder)
    if log_result is not None:
        rows.append(
            f"| The prediction log: throughput with ÷ without, records dropped | "
            f"{log_result['throughput_ratio']:.3f}, {log_result['records_dropped']} | "
            "[prediction log](docs/performance.md#the-prediction-logs-cost) |"
        )
    serve_result = load("serve", folder)
    if serve_result is not None:
        for target in serve_result["targets"]:
            if target["what"] in HEADLINE_SERVED:
                rows.append(
                    f"| Served: {target['what']} | {target['value']:.2f} ({target['target']}: "
                    f"{_met(target['met'])}) | "
                    "[served benchmark](docs/performance.md#served-benchmark) |"
                )
    if not rows:
        return "No committed results yet: see [docs/performance.md](docs/performance.md).\n"
    machines = sorted(
        {r["machine"] for r in (raw_result, rollout_result, log_result, serve_result) if r}
    )
    return (
        "| figure | measured | how |\n| --- | --- | --- |\n"
        + "\n".join(rows)
        + f"\n\nMeasured on {'; '.join(machines)}.\n"
    )


# Settings classes, in the order docs/serving.md lists them: (import path, class name).
SETTINGS = (
    ("serving.settings", "ServingSettings"),
    ("runners.settings", "BackendSettings"),
    ("runners.settings", "DataSettings"),
    ("monitoring.settings", "PredictionLogSettings"),
    ("monitoring.settings", "DriftSettings"),
    ("lifecycle.settings", "RegistrySettings"),
    ("lifecycle.controller", "RolloutSettings"),
    ("triton_server.settings", "TritonSettings"),
)


def _default(field: Any) -> str:
    from pydantic_core import PydanticUndefined

    value = field.default
    if value is PydanticUndefined:
        return "(required)"
    if value is None:
        return "none"
    if isinstance(value, Path) and value.is_relative_to(REPO_ROOT):
        return f"<project>/{value.relative_to(REPO_ROOT).as_posix()}"
    text = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
    return text.replace("|", "\\|")


def settings_reference() -> str:
    """One table per settings class: environment variable, default, meaning."""
    import importlib

    sections = []
    seen: set[str] = set()
    for module, name in SETTINGS:
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        prefix = cls.model_config.get("env_prefix", "")
        rows = []
        for field_name, field in cls.model_fields.items():
            variable = f"{prefix}{field_name}".upper()
            if variable in seen:
                continue
            seen.add(variable)
            meaning = (field.description or "").replace("|", "\\|").replace("\n", " ")
            rows.append(f"| `{variable}` | `{_default(field)}` | {meaning} |")
        if rows:
            doc = (cls.__doc__ or "").strip().splitlines()[0]
            sections.append(
                f"### `{name}` ({module})\n\n{doc}\n\n| variable | default | meaning |\n"
                "| --- | --- | --- |\n" + "\n".join(rows) + "\n"
            )
    return "\n".join(sections)


def endpoints_reference() -> str:
    """Every route of the BentoML service's OpenAPI document, with its summary."""
    from serving.app import create_app
    from serving.settings import ServingSettings

    document = create_app(ServingSettings()).openapi()
    rows = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            secured = "admin" if operation.get("security") else "open"
            rows.append(
                f"| `{method.upper()} {path}` | {secured} | {operation.get('summary', '')} |"
            )
    return "| endpoint | credential | what |\n| --- | --- | --- |\n" + "\n".join(rows) + "\n"


# Blocks rendered from the code itself rather than from a benchmark's results.
REFERENCES: dict[str, Callable[[], str]] = {
    "settings": settings_reference,
    "endpoints": endpoints_reference,
}


RENDERERS: dict[str, Callable[[Result], str]] = {
    "raw": raw,
    "serve": serve,
    "rollout": rollout,
    "predictionlog": predictionlog,
    "overload": overload,
    "integrity": integrity,
    "tritonmodes": tritonmodes,
}
# A block whose results file is not named after it.
FILES = {"tritonmodes": "triton-modes"}


def load(name: str, folder: Path = COMMITTED) -> Result | None:
    path = folder / f"bench-{FILES.get(name, name)}.json"
    if not path.is_file():
        return None
    found: Result = json.loads(path.read_text())
    return found


def render_page(text: str, folder: Path = COMMITTED) -> str:
    """The page with every results block rendered from `folder`."""

    def block(match: re.Match[str]) -> str:
        name = match.group("name")
        if name == "headline":
            return f"{match.group(1)}{headline(folder)}{match.group(4)}"
        if name in REFERENCES:
            return f"{match.group(1)}{REFERENCES[name]()}{match.group(4)}"
        if name not in RENDERERS:
            raise SystemExit(f"{PAGE}: unknown results block {name!r}; known: {list(RENDERERS)}")
        result = load(name, folder)
        body = (
            RENDERERS[name](result)
            if result is not None
            else f"No committed result yet: run `make bench-{name}`, then `make docs`.\n"
        )
        return f"{match.group(1)}{body}{match.group(4)}"

    return BLOCK.sub(block, text)


def plot_raw(result: Result, path: Path) -> None:
    """Images/s by batch size, one line per variant and backend, one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = sorted({row["family"] for row in result["rows"]})
    figure, axes = plt.subplots(1, len(families), figsize=(4.2 * len(families), 3.4))
    for axis, family in zip(figure.axes if len(families) > 1 else [axes], families, strict=True):
        series: dict[str, list[tuple[int, float]]] = {}
        for row in result["rows"]:
            if row["family"] == family:
                label = f"{row['variant']} {row['backend']}"
                series.setdefault(label, []).append(
                    (row["timing"]["batch_size"], row["timing"]["images_per_s"])
                )
        for label, points in sorted(series.items()):
            points.sort()
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        axis.set(title=family, xlabel="batch size", ylabel="images/s", xscale="log", yscale="log")
        axis.legend(fontsize=7)
    figure.suptitle(result["machine"], fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.docs", description=__doc__)
    parser.add_argument("--take", type=Path, help="copy this folder's bench-*.json in first")
    parser.add_argument("--check", action="store_true", help="only say whether it is current")
    args = parser.parse_args(argv)
    if args.take is not None:
        COMMITTED.mkdir(parents=True, exist_ok=True)
        for name in RENDERERS:
            source = args.take / f"bench-{FILES.get(name, name)}.json"
            if source.is_file():
                shutil.copyfile(source, COMMITTED / source.name)
    stale = []
    for page in (PAGE, README, SERVING):
        current = page.read_text()
        rendered = render_page(current)
        if rendered != current:
            stale.append(page)
            if not args.check:
                page.write_text(rendered)
    if args.check:
        for page in stale:
            sys.stderr.write(f"{page} is not rendered from {COMMITTED}: run `make docs`\n")
        return 1 if stale else 0
    result = load("raw")
    if result is not None:
        plot_raw(result, PLOTS / "bench-raw.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
