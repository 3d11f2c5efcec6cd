"""The comparison matrix under Locust, with a report: `make compare` (`--help` for subsets).

    .venv/bin/python -m load_tests.compare --front-ends bentoml,baseline --models digits \\
        --replicas 1,2 --step-s 6

For every cell (front end × model × variant × batching × replicas × replica mode, see
`load_tests.matrix`) it starts the cell's servers (once per deployment), warms up, then
runs a step load (`load_tests/locustfile.py --shape step`) with a fixed duration per step,
then a second pass with a few user counts between the capacity step and the next larger one
(`results.refine_users`), so capacity is found near the knee, not only at the coarse steps.
Each step gives throughput, p50/p95/p99, errors and shed responses, and, from a Prometheus
scraping the replicas every second, the server-side mean batch size and queue wait. The
cell's capacity is its best step within the p99 target with no error. CPU time is counted
for the servers, nginx, Prometheus, Locust and everything else on the machine. Everything
lands in `results/<timestamp>/`: Locust's CSVs, `summary.json`, plots, `report.md` and
`report.html` (`load_tests.report`).
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.locust_run import SHED, LoadResult, run_locust
from load_tests import matrix, report, serverside
from load_tests.results import (
    CellResult,
    CpuUse,
    Machine,
    Step,
    Summary,
    capacity,
    refine_users,
)
from load_tests.results import within_target as meets
from load_tests.stack import Stack, running
from runners.offering import offer
from runners.repository import Repository
from runners.settings import REPO_ROOT, BackendSettings

log = logging.getLogger(__name__)
SCRAPE_WAIT_S = 2.5  # two scrapes after a step ends, before its window is queried


def machine() -> Machine:
    from offline.card import describe_machine

    return Machine(
        cpu_model=describe_machine().split(",")[0],
        cores=os.cpu_count() or 1,
        memory_gib=round(psutil.virtual_memory().total / 2**30, 1),
        platform=f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
    )


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (all cores; idle and iowait excluded)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def other_processes() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of every process that is not this driver or one it started."""
    ours = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    found = {}
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        if proc.pid in ours or proc.info["cpu_times"] is None:
            continue
        words = [w for w in (proc.info["cmdline"] or [proc.info["name"] or "?"]) if w]
        label = " ".join(Path(w).name if "/" in w else w for w in words[:4])[:80]
        found[proc.pid] = (label, proc.info["cpu_times"].user + proc.info["cpu_times"].system)
    return found


def _top_delta(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], top: int = 6
) -> dict[str, float]:
    """The other processes that used the most CPU during the run (alive at both ends)."""
    used: dict[str, float] = {}
    for pid, (label, seconds) in after.items():
        if pid in before:
            used[label] = used.get(label, 0.0) + seconds - before[pid][1]
    ranked = sorted(used.items(), key=lambda item: -item[1])[:top]
    return {label: round(seconds, 1) for label, seconds in ranked if seconds >= 1.0}


def step_users(cell: matrix.Cell, args: argparse.Namespace) -> list[int]:
    chosen = args.step_users or matrix.STEP_USERS[cell.model]
    return [int(n) for n in chosen]


def target_ms(model: str, args: argparse.Namespace) -> float:
    return float(args.p99_target_ms or matrix.P99_TARGET_MS[model])


def load_options(cell: matrix.Cell, stack: Stack) -> list[str]:
    options = ["--model", cell.model, "--variant", cell.variant]
    if cell.front_end == "triton-grpc":
        options += ["--grpc", stack.grpc]
    return options


def _step_load(  # noqa: PLR0917 (one pass of the step load, its inputs in order)
    cell: matrix.Cell,
    stack: Stack,
    args: argparse.Namespace,
    users: list[int],
    prefix: Path,
    options: list[str],
) -> tuple[LoadResult, list[dict[str, object]]]:
    steps_file = prefix.with_name(prefix.name + "_steps.json")
    shape = ["--shape", "step", "--step-users", ",".join(map(str, users)),
             "--step-s", str(args.step_s), "--settle-s", str(args.settle_s),
             "--steps-out", str(steps_file)]  # fmt: skip
    load = run_locust(stack.url, cell.locust_user(), users[0], len(users) * args.step_s + 30,
                      prefix, [*options, *shape])  # fmt: skip
    return load, json.loads(steps_file.read_text())


def measure(cell: matrix.Cell, stack: Stack, args: argparse.Namespace, out: Path) -> CellResult:
    """Warm-up, then the step load in two passes (coarse steps, then finer ones around the
    knee); its steps read back with their server-side figures."""
    users = step_users(cell, args)
    options = load_options(cell, stack)
    user = cell.locust_user()
    if args.warmup_s > 0:  # 0 skips it: both front ends warm every model before ready
        with tempfile.TemporaryDirectory(prefix="warmup-") as warm:
            run_locust(stack.url, user, min(8, users[-1]), args.warmup_s, Path(warm) / "w",
                       options)  # fmt: skip
    prefix = out / "locust" / cell.key
    target = target_ms(cell.model, args)
    before = (busy_cpu_s(), stack.serving_cpu_s(), stack.balancer_cpu_s(),
              stack.prometheus_cpu_s(), time.monotonic())  # fmt: skip
    load, raw = _step_load(cell, stack, args, users, prefix, options)
    if stack.prometheus:
        time.sleep(SCRAPE_WAIT_S)
    steps = [_step(r, cell, stack, target) for r in raw]
    loads = [load]
    finer = refine_users(steps) if args.refine else []
    if finer:
        fine_prefix = prefix.with_name(cell.key + "_refine")
        load, raw = _step_load(cell, stack, args, finer, fine_prefix, options)
        loads.append(load)
        if stack.prometheus:
            time.sleep(SCRAPE_WAIT_S)
        steps = sorted([*steps, *(_step(r, cell, stack, target) for r in raw)],
                       key=lambda s: s.users)  # fmt: skip
    wall = time.monotonic() - before[4]
    servers_s = stack.serving_cpu_s() - before[1]
    balancer_s = stack.balancer_cpu_s() - before[2]
    prometheus_s = stack.prometheus_cpu_s() - before[3]
    machine_s = busy_cpu_s() - before[0]
    generator_s = sum(one.generator_cpu_s for one in loads)
    cpu = CpuUse(
        wall_s=wall,
        servers_s=servers_s,
        balancer_s=balancer_s,
        generator_s=generator_s,
        prometheus_s=prometheus_s,
        other_s=max(0.0, machine_s - servers_s - balancer_s - prometheus_s - generator_s),
    )
    best = capacity(steps)
    clean = [s for s in steps if s.errors == 0]
    requests = sum(one.requests for one in loads)
    errors = sum(one.errors for one in loads)
    shed = sum(one.shed for one in loads)
    return CellResult(
        key=cell.key,
        front_end=cell.front_end,
        model=cell.model,
        variant=cell.variant,
        batching=cell.batching,
        replicas=cell.replicas,
        replica_mode=cell.replica_mode,
        locust_user=user,
        p99_target_ms=target,
        capacity_rps=best.requests_per_s if best else 0.0,
        capacity_met=best is not None,
        capacity_users=best.users if best else None,
        peak_rps=max((s.requests_per_s for s in clean), default=0.0),
        requests=requests,
        errors=errors,
        shed=shed,
        error_ratio=errors / requests if requests else 0.0,
        shed_ratio=shed / requests if requests else 0.0,
        right_labels=sum(one.right_labels for one in loads),
        wrong_labels=sum(one.wrong_labels for one in loads),
        steps=steps,
        cpu=cpu,
        csv_prefix=str(prefix.relative_to(out)),
        refined_users=finer,
    )


def _step(raw: dict[str, object], cell: matrix.Cell, stack: Stack, target: float) -> Step:
    statuses: dict[str, int] = raw["statuses"]  # type: ignore[assignment]
    shed = sum(n for status, n in statuses.items() if status in SHED)
    errors = int(raw["failures"]) - shed  # type: ignore[call-overload]
    figures: dict[str, float | None] = {"batch_size": None, "queue_wait_ms": None}
    if stack.prometheus:
        figures = serverside.window_figures(
            stack.prometheus.url, stack.deployment.server, cell.model, cell.variant,
            float(raw["start_unix"]), float(raw["end_unix"]),  # type: ignore[arg-type]
        )  # fmt: skip
    p99 = raw["p99_ms"]
    return Step(
        users=int(raw["users"]),  # type: ignore[call-overload]
        duration_s=float(raw["duration_s"]),  # type: ignore[arg-type]
        requests=int(raw["requests"]),  # type: ignore[call-overload]
        errors=errors,
        shed=shed,
        requests_per_s=float(raw["requests_per_s"]),  # type: ignore[arg-type]
        p50_ms=raw["p50_ms"],  # type: ignore[arg-type]
        p95_ms=raw["p95_ms"],  # type: ignore[arg-type]
        p99_ms=p99,  # type: ignore[arg-type]
        wrong_labels=int(raw["wrong_labels"]),  # type: ignore[call-overload]
        batch_size=figures.get("batch_size"),
        queue_wait_ms=figures.get("queue_wait_ms"),
        within_target=meets(p99, errors, shed, target),  # type: ignore[arg-type]
    )


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=REPO_ROOT / "model_repository")
    parser.add_argument(
        "--front-ends",
        type=_csv,
        default=matrix.FRONT_ENDS,
        help=f"comma-separated subset of {','.join(matrix.FRONT_ENDS)}",
    )
    parser.add_argument(
        "--models", type=_csv, default=matrix.MODELS, help=f"subset of {','.join(matrix.MODELS)}"
    )
    parser.add_argument(
        "--variants",
        type=_csv,
        default=matrix.VARIANTS,
        help="fp32,bf16,int8 (a variant a model does not offer on this CPU is left out)",
    )
    parser.add_argument("--batching", type=_csv, default=("on", "off"), help="on,off")
    parser.add_argument("--replicas", type=_csv, default=("1", "2", "3"), help="1,2,3")
    parser.add_argument(
        "--replica-modes",
        type=_csv,
        default=matrix.REPLICA_MODES,
        help="nginx (N processes behind nginx), workers (BentoML's workers)",
    )
    parser.add_argument(
        "--step-users",
        type=_csv,
        default=(),
        help="users per step, all models (default: per model, see matrix.py)",
    )
    parser.add_argument("--step-s", type=float, default=8.0, help="seconds per step")
    parser.add_argument(
        "--settle-s",
        type=float,
        default=2.0,
        help="first seconds of each step left out of its figures",
    )
    parser.add_argument(
        "--warmup-s", type=float, default=3.0, help="warm-up before each cell (0: none)"
    )
    parser.add_argument(
        "--no-refine",
        dest="refine",
        action="store_false",
        help="skip the second pass (steps between the capacity step and the next)",
    )
    parser.add_argument(
        "--p99-target-ms",
        type=float,
        default=0.0,
        help="one p99 target for all models (default: per model, matrix.py)",
    )
    parser.add_argument(
        "--only",
        type=_csv,
        default=(),
        help="keep only the cells whose key matches one of these comma-separated patterns "
        "(fnmatch, e.g. '*-batch-*,baseline-*'); keys look like "
        "triton-grpc-digits-int8-nobatch-2nginx",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="report folder (default: results/<timestamp>)"
    )
    parser.add_argument("--quick", action="store_true",
                        help="the smallest useful subset: digits, fp32, batching on, "
                        "bentoml and baseline, replicas 1 and 2, 4 s steps")  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.front_ends, args.models, args.variants = (
            ("bentoml", "baseline"),
            ("digits",),
            ("fp32",),
        )
        args.batching, args.replicas, args.step_s = ("on",), ("1", "2"), 4.0
    args.repository = args.repository.resolve()
    return args


def build_missing(repository: Path, models: tuple[str, ...]) -> None:
    """Build the load profiles and the detector only when the chosen models need them and the
    repository lacks them (minutes): a digits-only subset never waits for them."""
    families = Repository(repository).families()
    missing = [m for m in models if m not in families]
    if not missing:
        return
    if "digits" in missing:
        raise SystemExit(f"digits not in {repository}: run `make models`")
    offline = [sys.executable, "-m", "offline", "--repository", str(repository)]
    profiles = [m for m in missing if m not in matrix.DETECTORS]
    if profiles:
        log.info("building the load profiles for %s (minutes)", ", ".join(profiles))
        subprocess.run([*offline, "models", "--profiles"], check=True, cwd=REPO_ROOT)
    if any(m in matrix.DETECTORS for m in missing):
        log.info("building the digit detector (training: minutes)")
        subprocess.run([*offline, "detector"], check=True, cwd=REPO_ROOT)
    still = [m for m in models if m not in Repository(repository).families()]
    if still:
        raise SystemExit(f"{', '.join(still)} not in {repository} after building them")


def chosen_cells(args: argparse.Namespace) -> list[matrix.Cell]:
    build_missing(args.repository, args.models)
    chosen = matrix.cells(
        front_ends=args.front_ends,
        models=args.models,
        variants=args.variants,
        batching=tuple(b == "on" for b in args.batching),
        replicas=tuple(int(n) for n in args.replicas),
        replica_modes=args.replica_modes,
    )
    if args.only:
        chosen = [c for c in chosen if any(fnmatch.fnmatch(c.key, p) for p in args.only)]
    return _offered(args.repository, chosen)


def _offered(repository: Path, chosen: list[matrix.Cell]) -> list[matrix.Cell]:
    """The cells whose variant the model offers on this CPU; the others are logged once."""
    families = Repository(repository).families()
    offers = {m: offer(families[m], BackendSettings()) for m in {c.model for c in chosen}}
    kept, left = [], set()
    for cell in chosen:
        if cell.variant in offers[cell.model].offered:
            kept.append(cell)
        else:
            left.add((cell.model, cell.variant))
    for model, variant in sorted(left):
        why = offers[model].withheld.get(variant, "not in the repository")
        log.info("leaving out %s %s: %s", model, variant, why)
    return kept


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    cells = chosen_cells(args)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out: Path = (args.out or REPO_ROOT / "results" / stamp).resolve()
    out.mkdir(parents=True, exist_ok=True)
    groups = matrix.by_deployment(cells)
    log.info("%d cells on %d deployments -> %s", len(cells), len(groups), out)
    results: list[CellResult] = []
    startup: dict[str, float] = {}
    others_before = other_processes()
    with tempfile.TemporaryDirectory(prefix="compare-") as work:
        for deployment, group in groups.items():
            with running(deployment, args.repository, Path(work) / deployment.key) as stack:
                startup[deployment.key] = stack.started_s
                log.info("%s ready in %.1f s", deployment.key, stack.started_s)
                for cell in group:
                    result = measure(cell, stack, args, out)
                    results.append(result)
                    log.info(
                        "  %-46s capacity %8.1f req/s (p99 <= %.0f ms)  peak %8.1f  "
                        "errors %d  shed %d", cell.key, result.capacity_rps,
                        result.p99_target_ms, result.peak_rps, result.errors, result.shed,
                    )  # fmt: skip
    others = _top_delta(others_before, other_processes())
    summary = Summary(
        created=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        command=shlex.join(["python", "-m", "load_tests.compare", *(argv or sys.argv[1:])]),
        machine=machine(),
        subset={
            "front_ends": list(args.front_ends),
            "models": list(args.models),
            "variants": list(args.variants),
            "batching": list(args.batching),
            "replicas": list(args.replicas),
            "replica_modes": list(args.replica_modes),
            **({"only cells matching": list(args.only)} if args.only else {}),
        },
        step_s=args.step_s,
        settle_s=args.settle_s,
        warmup_s=args.warmup_s,
        step_users={
            m: step_users(matrix.Cell("bentoml", m, "fp32", True, 1, "nginx"), args)
            for m in args.models
        },
        p99_target_ms={m: target_ms(m, args) for m in args.models},
        startup_s=startup,
        other_processes_cpu_s=others,
        cells=results,
    )
    (out / "summary.json").write_text(summary.model_dump_json(indent=2) + "\n")
    report.write(summary, out)
    log.info("wrote %s", out / "report.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
