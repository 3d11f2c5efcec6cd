"""A short atheris campaign on decode-and-preprocess: it ends cleanly and leaves no crash file.

`make fuzz` runs the long campaign (FUZZ_SECONDS, default 600).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from runners.settings import REPO_ROOT

SECONDS = 15


def test_short_campaign_finds_only_typed_errors(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    done = subprocess.run(
        [
            sys.executable, "-m", "tests.fuzz.fuzz_preprocessing", "--seconds", str(SECONDS),
            "--corpus", str(tmp_path / "corpus"), "--artifacts", str(artifacts),
        ],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=SECONDS + 120, check=False,
    )  # fmt: skip
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    assert not list(artifacts.iterdir()), log[-6000:]
    runs = re.search(r"Done (\d+) runs in (\d+) second", log)
    assert runs, log[-3000:]
    # The seed corpus alone is two dozen inputs; a working campaign mutates far beyond it.
    assert int(runs.group(1)) > 100, log[-3000:]
    assert len(list((tmp_path / "corpus").iterdir())) >= 20
