"""The comparison report: `report.md`, `report.html` and PNG plots from `summary.json`.

    .venv/bin/python -m load_tests.report results/<timestamp>   # redraw from its summary
    .venv/bin/python -m load_tests.report results/<timestamp> notes.md   # with notes

Notes are a reader's remarks on a run (what was investigated, what is known about a cell):
one bullet per paragraph of the file, under their own heading, apart from the computed text.

Every sentence with a figure is computed from the summary: the report states the machine,
what shared its CPU, and comparisons only where both sides were measured. Scaling
efficiency is throughput at N replicas ÷ (N × throughput at 1), on peak throughput (the
best error-free step) and on capacity at the p99 target.
"""

from __future__ import annotations

import html
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from load_tests.results import CellResult, Summary

PLOTS = {
    "throughput_vs_concurrency.png": "Throughput against concurrent users, per configuration",
    "latency_percentiles.png": "p50 / p95 / p99 at each cell's capacity step (line: p99 target)",
    "int8_vs_fp32.png": "Capacity at the p99 target, INT8 and BF16 against FP32",
    "scaling.png": "Peak throughput against replicas (dashed: N × the 1-replica figure)",
}


@dataclass
class Document:
    """A report as blocks, rendered to Markdown and to HTML alike."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("h", text))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: Iterable[str]) -> None:
        listed = list(items)
        if listed:
            self.blocks.append(("ul", listed))

    def table(self, head: list[str], rows: list[list[str]]) -> None:
        if rows:
            self.blocks.append(("table", (head, rows)))

    def image(self, path: str, caption: str) -> None:
        self.blocks.append(("img", (path, caption)))

    def markdown(self) -> str:
        out: list[str] = []
        for kind, body in self.blocks:
            if kind == "h":
                out.append(f"{'#' if not out else '##'} {body}")
            elif kind == "p":
                out.append(str(body))
            elif kind == "ul":
                out.append("\n".join(f"- {item}" for item in body))
            elif kind == "table":
                head, rows = body
                lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
                lines += ["| " + " | ".join(row) + " |" for row in rows]
                out.append("\n".join(lines))
            else:
                path, caption = body
                out.append(f"![{caption}]({path})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        e = html.escape
        out = [
            f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
            "padding:2px 6px;text-align:right}th{background:#eee}img{max-width:100%}"
            "code{background:#f4f4f4}</style></head><body>",
        ]
        first = True
        for kind, body in self.blocks:
            if kind == "h":
                tag = "h1" if first else "h2"
                out.append(f"<{tag}>{e(str(body))}</{tag}>")
                first = False
            elif kind == "p":
                out.append(f"<p>{_inline(str(body))}</p>")
            elif kind == "ul":
                items = "".join(f"<li>{_inline(i)}</li>" for i in body)
                out.append(f"<ul>{items}</ul>")
            elif kind == "table":
                head, rows = body
                cells = "".join(f"<th>{e(h)}</th>" for h in head)
                lines = [f"<tr>{cells}</tr>"]
                lines += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
                out.append("<table>" + "".join(lines) + "</table>")
            else:
                path, caption = body
                out.append(
                    f"<figure><img src='{e(path)}' alt='{e(caption)}'>"
                    f"<figcaption>{e(caption)}</figcaption></figure>"
                )
        return "\n".join([*out, "</body></html>\n"])


def _inline(text: str) -> str:
    """`code` spans of Markdown as <code>; everything else escaped."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _f(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _label(cell: CellResult, replicas: bool = True) -> str:
    parts = [cell.front_end, cell.model, cell.variant, "batch" if cell.batching else "nobatch"]
    if replicas:
        parts.append(f"×{cell.replicas} {cell.replica_mode}")
    return " ".join(parts)


def _key_without(cell: CellResult, *fields: str) -> tuple[object, ...]:
    names = ("front_end", "model", "variant", "batching", "replicas", "replica_mode")
    return tuple(getattr(cell, n) for n in names if n not in fields)


# Plots


def plot_throughput(summary: Summary, path: Path) -> None:
    models = sorted(
        {c.model for c in summary.cells}, key=lambda m: summary.p99_target_ms.get(m, 0.0)
    )
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for cell in (c for c in summary.cells if c.model == model):
            users = [s.users for s in cell.steps]
            ax.plot(users, [s.requests_per_s for s in cell.steps], marker="o", label=_label(cell))
        ax.set_xscale("log", base=2)
        ax.set(title=model, xlabel="concurrent users", ylabel="requests/s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_latency(summary: Summary, path: Path) -> None:
    cells = [c for c in summary.cells if c.capacity_step is not None]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.32 * max(1, len(cells))))
    for i, cell in enumerate(cells):
        step = cell.capacity_step
        assert step is not None
        for offset, (name, value) in enumerate(
            (("p50", step.p50_ms), ("p95", step.p95_ms), ("p99", step.p99_ms))
        ):
            ax.barh(i + (offset - 1) * 0.27, value or 0, height=0.27, color=f"C{offset}",
                    label=name if i == 0 else None)  # fmt: skip
        ax.plot([cell.p99_target_ms] * 2, [i - 0.45, i + 0.45], color="red", lw=1)
    ax.set_yticks(range(len(cells)), [f"{_label(c)} @{c.capacity_users}u" for c in cells],
                  fontsize=7)  # fmt: skip
    ax.set_xscale("log")
    ax.set(xlabel="ms (log scale)", title="latency at capacity")
    ax.invert_yaxis()
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def variant_pairs(summary: Summary, variant: str = "int8") -> list[tuple[CellResult, CellResult]]:
    """(FP32 cell, `variant` cell) pairs that differ in nothing else."""
    fp32 = {_key_without(c, "variant"): c for c in summary.cells if c.variant == "fp32"}
    return [
        (fp32[_key_without(c, "variant")], c)
        for c in summary.cells
        if c.variant == variant and _key_without(c, "variant") in fp32
    ]


REDUCED = (("int8", "INT8", "C1"), ("bf16", "BF16", "C2"))


def plot_variants(summary: Summary, path: Path) -> None:
    """FP32 capacity beside INT8's and BF16's (where the run has them), per configuration."""
    rows: dict[str, dict[str, CellResult]] = {}
    for variant, _, _ in REDUCED:
        for fp32, other in variant_pairs(summary, variant):
            row = rows.setdefault(_label(fp32).replace(" fp32", ""), {"fp32": fp32})
            row[variant] = other
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.5 * max(1, len(rows))))
    bars = (("fp32", "FP32", "C0"), *REDUCED)
    width = 0.8 / len(bars)
    seen: set[str] = set()
    for i, cells_by_variant in enumerate(rows.values()):
        for j, (variant, name, color) in enumerate(bars):
            if variant in cells_by_variant:
                ax.barh(
                    i - 0.4 + (j + 0.5) * width,
                    cells_by_variant[variant].capacity_rps,
                    height=width,
                    color=color,
                    label=None if name in seen else name,
                )
                seen.add(name)
    ax.set_yticks(range(len(rows)), list(rows), fontsize=7)
    ax.set(xlabel="capacity, requests/s at the p99 target", title="INT8 and BF16 vs FP32")
    ax.invert_yaxis()
    if rows:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no cell pair with FP32 and another variant in this run",
                ha="center", transform=ax.transAxes)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def scaling_groups(summary: Summary) -> dict[str, list[CellResult]]:
    """Cells by configuration (all but replicas), those with 1 replica measured, N sorted."""
    groups: dict[tuple[object, ...], list[CellResult]] = {}
    for cell in summary.cells:
        groups.setdefault(_key_without(cell, "replicas", "replica_mode"), []).append(cell)
    out: dict[str, list[CellResult]] = {}
    for cells in groups.values():
        ones = [c for c in cells if c.replicas == 1]
        for mode in sorted({c.replica_mode for c in cells if c.replicas > 1}):
            line = sorted(ones + [c for c in cells if c.replica_mode == mode and c.replicas > 1],
                          key=lambda c: c.replicas)  # fmt: skip
            if ones and len(line) > 1:
                out[_label(line[-1], replicas=False) + f" ({mode})"] = line
    return out


def plot_scaling(summary: Summary, path: Path, cores: int) -> None:
    groups = scaling_groups(summary)
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, cells) in enumerate(groups.items()):
        counts = [c.replicas for c in cells]
        peaks = [c.peak_rps or float("nan") for c in cells]  # nan: no error-free step
        ax.plot(counts, peaks, marker="o", color=f"C{i}", label=name)
        ax.plot(counts, [n * cells[0].peak_rps for n in counts], ls="--", color=f"C{i}", lw=1)
    ax.axvline(cores, color="grey", lw=1, ls=":")
    ax.text(cores, ax.get_ylim()[1] * 0.98, f" {cores} cores", color="grey", va="top")
    ax.set(xlabel="replicas", ylabel="peak requests/s", title="scaling with replicas")
    ax.set_xticks(sorted({c.replicas for c in summary.cells}))
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# Text


def _shares(summary: Summary) -> list[str]:
    cores = summary.machine.cores
    wall = sum(c.cpu.wall_s for c in summary.cells)
    if not wall:
        return []

    def share(seconds: float) -> str:
        return f"{seconds:,.0f} CPU-s ({seconds / wall:.2f} cores on average)"

    cpu = [c.cpu for c in summary.cells]
    lines = [
        f"Measured load ran {wall:,.0f} s on {cores} cores ({wall * cores:,.0f} CPU-s available).",
        f"servers (all replicas' process trees): {share(sum(c.servers_s for c in cpu))}",
        f"nginx (with 2 or 3 replicas): {share(sum(c.balancer_s for c in cpu))}",
        f"Locust, the load generator, on the same cores: {share(sum(c.generator_s for c in cpu))}",
        f"Prometheus scraping every second: {share(sum(c.prometheus_s for c in cpu))}",
        f"everything else on the machine: {share(sum(c.other_s for c in cpu))}",
    ]
    if summary.other_processes_cpu_s:
        busiest = ", ".join(f"`{k}` {v:,.0f} s" for k, v in summary.other_processes_cpu_s.items())
        lines.append(f"busiest processes this run did not start (whole run): {busiest}")
    return lines


def _cell_rows(summary: Summary) -> list[list[str]]:
    rows = []
    for c in summary.cells:
        step = c.capacity_step
        rows.append([
            c.front_end, c.model, c.variant, "on" if c.batching else "off", str(c.replicas),
            c.replica_mode, _f(c.capacity_rps) if c.capacity_met else "none met",
            str(c.capacity_users or "–"), _f(step.p50_ms if step else None, 0),
            _f(step.p95_ms if step else None, 0), _f(step.p99_ms if step else None, 0),
            _f(c.peak_rps), f"{c.error_ratio:.2%}", f"{c.shed_ratio:.2%}",
            _f(step.batch_size if step else None, 2), _f(step.queue_wait_ms if step else None, 2),
            _f(c.cpu.servers_s / c.cpu.wall_s, 2), _f(c.cpu.generator_s / c.cpu.wall_s, 2),
            _f(c.cpu.other_s / c.cpu.wall_s, 2),
        ])  # fmt: skip
    return rows


CELL_HEAD = [
    "front end", "model", "variant", "batching", "replicas", "mode", "capacity req/s",
    "users", "p50 ms", "p95 ms", "p99 ms", "peak req/s", "errors", "shed", "batch size",
    "queue wait ms", "server cores", "Locust cores", "other cores",
]  # fmt: skip


def _scaling_rows(summary: Summary) -> list[list[str]]:
    rows = []
    for name, cells in scaling_groups(summary).items():
        one = cells[0]
        for cell in cells[1:]:
            n = cell.replicas
            peak_eff = cell.peak_rps / (n * one.peak_rps) if one.peak_rps else None
            cap_eff = cell.capacity_rps / (n * one.capacity_rps) if one.capacity_rps else None
            rows.append([name, str(n), _f(one.peak_rps), _f(cell.peak_rps),
                         _f(peak_eff, 2), _f(cell.capacity_rps), _f(cap_eff, 2)])  # fmt: skip
    return rows


def conclusions(summary: Summary) -> list[str]:
    """Statements that follow from the numbers, each with the numbers."""
    out = []
    dirty = [c.key for c in summary.cells if c.errors]
    out.append(
        f"{len(summary.cells) - len(dirty)} of {len(summary.cells)} cells had zero errors"
        + (f"; with errors: {', '.join(dirty)}." if dirty else ".")
    )
    cores = summary.machine.cores
    for name, cells in scaling_groups(summary).items():
        by_n = {c.replicas: c for c in cells}
        if cores in by_n and cores + 1 in by_n:
            at, over = by_n[cores], by_n[cores + 1]
            if at.errors or over.errors:
                out.append(f"{name}: {cores} against {cores + 1} replicas not compared: errors.")
            else:
                change = over.peak_rps / at.peak_rps - 1 if at.peak_rps else 0.0
                verdict = (
                    f"a replica beyond the {cores} cores added no throughput"
                    if change <= 0.05
                    else f"{cores + 1} replicas ran at "
                    f"{over.peak_rps / ((cores + 1) * by_n[1].peak_rps):.0%} efficiency"
                )
                out.append(
                    f"{name}: {cores + 1} replicas gave {_f(over.peak_rps)} req/s at peak "
                    f"against {_f(at.peak_rps)} with {cores} ({change:+.0%}): {verdict}."
                )
        if 2 in by_n and 1 in by_n and by_n[1].peak_rps and not by_n[2].errors:
            eff = by_n[2].peak_rps / (2 * by_n[1].peak_rps)
            out.append(f"{name}: 2 replicas ran at {eff:.0%} scaling efficiency (peak).")
    for variant, name, _ in REDUCED:
        for fp32, other in variant_pairs(summary, variant):
            if fp32.capacity_rps and other.capacity_rps:
                ratio = other.capacity_rps / fp32.capacity_rps
                out.append(
                    f"{_label(fp32).replace(' fp32', '')}: {name} capacity is {ratio:.2f}× "
                    f"FP32's ({_f(other.capacity_rps)} vs {_f(fp32.capacity_rps)} req/s)."
                )
    nginx = {_key_without(c, "replica_mode"): c for c in summary.cells if c.replica_mode == "nginx"}
    for workers in (c for c in summary.cells if c.replica_mode == "workers"):
        processes = nginx.get(_key_without(workers, "replica_mode"))
        if processes:
            out.append(
                f"{_label(workers, replicas=False)} ×{workers.replicas}: BentoML's workers "
                f"setting gave {_f(workers.capacity_rps)} req/s capacity "
                f"({_f(workers.peak_rps)} peak, {workers.errors} errors) against "
                f"{_f(processes.capacity_rps)} ({_f(processes.peak_rps)} peak, "
                f"{processes.errors} errors) for {workers.replicas} processes behind nginx."
            )
    on = {_key_without(c, "batching"): c for c in summary.cells if c.batching}
    for off in (c for c in summary.cells if not c.batching and c.front_end != "baseline"):
        batched = on.get(_key_without(off, "batching"))
        if batched and off.capacity_rps:
            ratio = batched.capacity_rps / off.capacity_rps
            out.append(
                f"{_label(off).replace(' nobatch', '')}: capacity with batching is "
                f"{ratio:.2f}× without ({_f(batched.capacity_rps)} vs {_f(off.capacity_rps)})."
            )
    return out


def document(summary: Summary, notes: list[str] | None = None) -> Document:
    doc = Document()
    m = summary.machine
    doc.heading("Load-test comparison")
    doc.para(
        f"Run {summary.created} with `{summary.command}` on {m.cpu_model}, {m.cores} cores, "
        f"{m.memory_gib:g} GiB ({m.platform})."
    )
    doc.para(
        "Subset measured: "
        + "; ".join(
            f"{axis.replace('_', ' ')} {', '.join(v)}" for axis, v in summary.subset.items()
        )
        + f". {len(summary.cells)} cells."
    )
    targets = ", ".join(f"{k} {v:g} ms" for k, v in summary.p99_target_ms.items())
    steps = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in summary.step_users.items())
    doc.para(
        f"Each cell: {summary.warmup_s:g} s warm-up, then a step load of closed-loop Locust "
        f"users (no think time), {summary.step_s:g} s per step of which the first "
        f"{summary.settle_s:g} s are left out (users per step: {steps}), then a second "
        "pass with up to two user counts between the best step within the target and the "
        "next larger one (the knee; the `users` column can be one of them). Capacity is the "
        f"best step throughput whose p99 stayed at or under the target ({targets}) with no "
        "error and nothing shed. Server-side batch size and queue wait are means over the "
        "capacity step, read from a Prometheus scraping every replica each second; the "
        "baseline exports no metrics. Replicas are separate server processes behind nginx "
        "(`nginx`) or BentoML's own entry and runner workers (`workers`); with N > 1 each "
        "replica's engine runs cores ÷ N intra-op threads (at least 1). Batching off is the "
        "`IMGSERVE_BATCHING=false` setting on the same repository (max batch size 1, no "
        "batching delay: BentoML's runner not batchable, Triton without a dynamic batcher); "
        "the baseline never batches."
    )
    doc.heading("What shared the CPU")
    doc.bullets(_shares(summary))
    doc.heading("Conclusions")
    doc.bullets(conclusions(summary))
    if notes:
        doc.heading("Notes on this run (written by hand, not computed)")
        doc.bullets(notes)
    doc.heading("Cells")
    doc.table(CELL_HEAD, _cell_rows(summary))
    doc.para(
        "server cores, Locust cores and other cores: CPU-s used during the step load ÷ its "
        "wall time; other is the whole machine's busy CPU (psutil) minus the servers, nginx, "
        "Prometheus and Locust: whatever else ran on the shared machine in that cell. "
        "errors and shed: share of all requests of the step load (429/503 are shed, not errors)."
    )
    doc.heading("Scaling with replicas")
    doc.para("Efficiency = throughput at N ÷ (N × throughput at 1 replica).")
    doc.table(
        ["configuration", "N", "peak at 1", "peak at N", "efficiency (peak)",
         "capacity at N", "efficiency (capacity)"],
        _scaling_rows(summary),
    )  # fmt: skip
    doc.heading("Plots")
    for name, caption in PLOTS.items():
        doc.image(f"plots/{name}", caption)
    doc.heading("Files")
    doc.bullets([
        "`summary.json`: every cell and step (the capacity planner reads `cells[*].capacity_rps`)",
        "`locust/<cell>_stats.csv`, `_stats_history.csv`, `_failures.csv`, `_exceptions.csv`: "
        "Locust's own CSVs; `_steps.json`: the per-step figures; `_checks.json`: answer checks",
    ])  # fmt: skip
    return doc


def read_notes(path: Path) -> list[str]:
    """One note per blank-line-separated paragraph, its lines joined."""
    paragraphs = path.read_text().split("\n\n")
    return [" ".join(p.split()) for p in paragraphs if p.strip()]


def write(summary: Summary, out: Path, notes: list[str] | None = None) -> None:
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    plot_throughput(summary, plots / "throughput_vs_concurrency.png")
    plot_latency(summary, plots / "latency_percentiles.png")
    plot_variants(summary, plots / "int8_vs_fp32.png")
    plot_scaling(summary, plots / "scaling.png", summary.machine.cores)
    doc = document(summary, notes)
    (out / "report.md").write_text(doc.markdown())
    (out / "report.html").write_text(doc.html("Load-test comparison"))


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    extra = read_notes(Path(sys.argv[2])) if len(sys.argv) > 2 else None
    write(Summary.model_validate_json((folder / "summary.json").read_text()), folder, extra)
