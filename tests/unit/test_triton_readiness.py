"""The Triton launcher's readiness gates (triton_server/readiness.py) as files on disk.

A gate's load must fail before any version is read (no stub process starts) and its config
must be one Triton parses; the loading gate's model must be valid Python for its stub. The
servers' behaviour with the gates is tested in tests/integration (test_model_faults.py,
test_shutdown.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from triton_server import readiness


@pytest.mark.parametrize("name", [readiness.LOADING, readiness.SHUTTING_DOWN])
def test_a_gate_is_a_parsable_config_without_a_version(tmp_path: Path, name: str) -> None:
    readiness.write_gate(tmp_path, name)
    folder = tmp_path / name
    config = text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.name == name
    assert [p.name for p in folder.iterdir()] == ["config.pbtxt"]


def test_the_loading_gates_model_compiles() -> None:
    source = readiness.GATE_MODEL.format(opened=readiness.OPENED, poll_s=readiness.POLL_S)
    compile(source, "model.py", "exec")
