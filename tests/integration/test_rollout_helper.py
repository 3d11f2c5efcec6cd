"""The rollout supervisor's registry helper process never outlives its serving process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.integration.conftest import REPO_ROOT

# A serving process that opens the helper, says the helper's pid, and is killed outright.
KILLED_OUTRIGHT = """
import os, signal, sys
from pathlib import Path
from lifecycle.supervisor import Rollouts
rollouts = Rollouts(Path(sys.argv[1]), ("digits",), lambda: "", lambda *args: None)
rollouts.prepare()
assert rollouts._helper is not None
print(rollouts._helper.submit(os.getpid).result(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_helper_ends_when_its_serving_process_is_killed(tmp_path: Path) -> None:
    env = {**os.environ, "IMGSERVE_DATA_DIR": str(tmp_path / "data")}
    # Files, not pipes: a helper that lives on holds a pipe open, and the run would wait on it.
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        done = subprocess.run(
            [sys.executable, "-c", KILLED_OUTRIGHT, str(REPO_ROOT / "model_repository")],
            check=False, cwd=REPO_ROOT, env=env, stdout=stdout, stderr=stderr, timeout=180,
        )  # fmt: skip
    assert done.returncode == -9, err.read_text()
    helper = psutil.Process(int(out.read_text().split()[-1]))
    deadline = time.monotonic() + 30
    while helper.is_running() and helper.status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the helper outlived its serving process by 30 s"
        time.sleep(0.1)
