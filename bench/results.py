"""Where a benchmark writes its result: one JSON file per benchmark, with the machine it ran on.

`make docs` renders the tables of docs/performance.md from the committed copies of these files
(`docs/results/`, see `bench.docs`), so every figure in the documentation is one a command wrote.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from runners.precision import this_cpu
from runners.settings import REPO_ROOT

RESULTS = REPO_ROOT / "results"


def default_out(bench: str) -> Path:
    return RESULTS / f"bench-{bench}.json"


def write(path: Path, bench: str, figures: dict[str, Any]) -> None:
    """Write `figures` with the command that measured them and the CPU they ran on."""
    from offline.card import describe_machine

    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "bench": bench,
        "command": "python -m bench." + bench.replace("-", "_") + " " + " ".join(sys.argv[1:]),
        "machine": describe_machine(),
        "cpu": this_cpu().model_dump(mode="json"),
        **figures,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
