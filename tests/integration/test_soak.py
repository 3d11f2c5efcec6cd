"""The 2-minute soak (`make soak` runs 30 minutes): no error, stable p99, no memory growth.

It runs the soak command as a user would, in a subprocess, and reads back its JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runners.settings import REPO_ROOT

pytestmark = pytest.mark.slow

DURATION_S = 120


def test_two_minute_soak_at_seventy_percent_of_capacity(tmp_path: Path) -> None:
    out = tmp_path / "soak"
    done = subprocess.run(
        [
            sys.executable, "-m", "load_tests.soak", "--duration", str(DURATION_S),
            "--window-s", "30", "--warmup-s", "10", "--capacity-step-s", "4", "--out", str(out),
        ],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=DURATION_S + 300, check=False,
    )  # fmt: skip
    log = done.stdout + done.stderr
    assert (out / "soak.json").is_file(), log[-6000:]
    result = json.loads((out / "soak.json").read_text())
    verdict = result["verdict"]
    assert len(result["windows"]) == 4, log[-3000:]
    assert sum(w["requests"] for w in result["windows"]) > 0
    assert verdict["error_ratio"] == 0, log[-3000:]
    assert verdict["p99_ok"], log[-3000:]
    assert verdict["rss_growth_mb"] < 50, log[-3000:]
    assert result["passed"] and done.returncode == 0, log[-3000:]
