"""Run one headless Locust load against one server and read back what it measured.

Locust runs as its own process (as a user would run it) with the project's locustfile;
its CSV statistics and the locustfile's answer checks (`--checks-out`) are parsed into a
`LoadResult`. The generator's own CPU time is measured too: on a 2-core machine it shares
the cores with the server, and a report has to say so.
"""

from __future__ import annotations

import csv
import json
import logging
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from runners.settings import REPO_ROOT

LOCUSTFILE = REPO_ROOT / "load_tests" / "locustfile.py"
SHED = ("429", "503", "UNAVAILABLE")

log = logging.getLogger(__name__)


class LoadResult(BaseModel):
    user: str
    users: int
    duration_s: float
    requests: int
    failures: int
    shed: int
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    statuses: dict[str, int]
    right_labels: int
    wrong_labels: int
    images_answered: int
    generator_cpu_s: float

    @property
    def errors(self) -> int:
        """Failures that were not load shedding (429/503): wrong answers, 4xx/5xx, resets."""
        return self.failures - self.shed


def run_locust(  # noqa: PLR0917 (the load's shape reads best in order)
    host: str,
    user: str,
    users: int,
    duration_s: float,
    out_prefix: Path,
    options: Sequence[str] = (),
) -> LoadResult:
    """`locust --headless` with `users` users spawned at once for `duration_s` seconds."""
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    checks = out_prefix.with_name(out_prefix.name + "_checks.json")
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", host, "-u", str(users), "-r", str(users), "-t", f"{max(1, round(duration_s))}s",
        "--csv", str(out_prefix), "--checks-out", str(checks), "--only-summary",
        "--loglevel", "WARNING", "--exit-code-on-error", "0", *options, user,
    ]  # fmt: skip
    checks.unlink(missing_ok=True)  # its presence below says this run got to its end
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run(  # a generous limit: a hung Locust must not hang the driver
            command, capture_output=True, text=True, check=False, cwd=REPO_ROOT,
            timeout=duration_s + 120,
        )  # fmt: skip
        returncode, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired as exc:
        # A long `make compare` can meet this (TritonGrpcUser, grpcio under gevent): the run
        # ends, its checks and stats are written on Locust's quitting event, and then the
        # process never exits. The load is measured by then; only a run that never got
        # that far is a failure.
        if not checks.is_file():
            raise RuntimeError(f"locust hung before its load ended: {command}") from exc
        log.warning("locust did not exit after its run (killed); its results are used")
        returncode, stderr = 0, ""
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if returncode != 0 or not checks.is_file():
        raise RuntimeError(f"locust failed ({returncode}):\n{stderr[-4000:]}")
    row = _aggregated(out_prefix.with_name(out_prefix.name + "_stats.csv"))
    found: dict[str, Any] = json.loads(checks.read_text())
    statuses: dict[str, int] = found["statuses"]
    return LoadResult(
        user=user,
        users=users,
        duration_s=duration_s,
        requests=int(row["Request Count"]),
        failures=int(row["Failure Count"]),
        shed=sum(count for status, count in statuses.items() if status in SHED),
        requests_per_s=float(row["Requests/s"]),
        p50_ms=_ms(row["50%"]),
        p95_ms=_ms(row["95%"]),
        p99_ms=_ms(row["99%"]),
        statuses=statuses,
        right_labels=found["right_labels"],
        wrong_labels=found["wrong_labels"],
        images_answered=found["images_answered"],
        generator_cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    )


# Locust's stats CSV columns. Its periodic writer and its final write can race when a load
# shape ends the run and can leave the header overwritten with blanks, so the Aggregated
# row is read by position when the header is unreadable.
STATS_COLUMNS = [
    "Type",
    "Name",
    "Request Count",
    "Failure Count",
    "Median Response Time",
    "Average Response Time",
    "Min Response Time",
    "Max Response Time",
    "Average Content Size",
    "Requests/s",
    "Failures/s",
    "50%",
    "66%",
    "75%",
    "80%",
    "90%",
    "95%",
    "98%",
    "99%",
    "99.9%",
    "99.99%",
    "100%",
]


def _aggregated(path: Path) -> dict[str, str]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0] if rows and "Name" in rows[0] else STATS_COLUMNS
    for row in rows:
        if len(row) > 1 and row[1] == "Aggregated":
            return dict(zip(header, row, strict=False))
    raise RuntimeError(f"{path} has no Aggregated row")


def _ms(value: str) -> float:
    return float(value) if value not in {"", "N/A"} else float("nan")
