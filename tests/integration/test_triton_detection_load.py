"""The Locust matrix's Triton users on the committed digit detector: `TritonHttpUser` and
`TritonGrpcUser` with `--model detector` send generated canvases of held-out digits to a real
`tritonserver` (as `make serve-triton` starts it) and check each answer's padded boxes,
scores, classes and count (`load_tests.answers.triton_detection_problem`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runners.repository import REGISTRY_STAMP
from tests.integration.conftest import REPO_ROOT
from tests.integration.test_triton import TritonProcess, launch, stop

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    root = tmp_path_factory.mktemp("triton_detector")
    shutil.copytree(
        REPO_ROOT / "model_repository" / "detector_fp32",
        root / "repo" / "detector_fp32",
        ignore=shutil.ignore_patterns(REGISTRY_STAMP),
    )
    running = launch(root / "repo", root / "server.log")
    try:
        yield running
    finally:
        stop(running)


@pytest.mark.parametrize("user", ["TritonHttpUser", "TritonGrpcUser"])
def test_triton_users_load_the_detector_and_check_its_boxes(
    server: TritonProcess, user: str, tmp_path: Path
) -> None:
    checks = tmp_path / "checks.json"
    command = [
        sys.executable, "-m", "locust", "-f", "load_tests/locustfile.py", "--headless",
        "-u", "2", "-r", "2", "-t", "4s", "--only-summary", "--host", f"http://{server.http}",
        "--grpc", server.grpc, "--model", "detector", "--variant", "fp32",
        "--checks-out", str(checks), user,
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    answered = json.loads(checks.read_text())
    assert set(answered["statuses"]) == {"200" if user == "TritonHttpUser" else "OK"}
    # Two users: at most two requests in flight when the run stops, answered but not checked.
    assert 0 < answered["images_answered"] <= sum(answered["statuses"].values())
    assert answered["images_answered"] >= sum(answered["statuses"].values()) - 2
