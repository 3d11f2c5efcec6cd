"""bench.servers.wait_quiet: a round starts once the servers have finished their work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench import servers

BUSY_THEN_IDLE = """
import time
end = time.monotonic() + {busy}
while time.monotonic() < end:
    pass
time.sleep(60)
"""


def server(tmp_path: Path, busy_s: float) -> servers.Server:
    code = BUSY_THEN_IDLE.format(busy=busy_s)
    process = subprocess.Popen([sys.executable, "-c", code])
    return servers.Server("busy", "http://127.0.0.1:1", process, tmp_path / "log")


def test_wait_quiet_waits_out_the_work_and_no_longer(tmp_path: Path) -> None:
    busy, idle = server(tmp_path, 1.0), server(tmp_path, 0.0)
    try:
        waited = servers.wait_quiet([busy, idle], window_s=0.1, timeout_s=10.0)
        assert 0.6 <= waited < 5.0
        assert servers.wait_quiet([busy, idle], window_s=0.1, timeout_s=10.0) < 0.5
    finally:
        for found in (busy, idle):
            found.process.kill()
            found.process.wait()


def test_wait_quiet_gives_up_at_its_timeout(tmp_path: Path) -> None:
    busy = server(tmp_path, 30.0)
    try:
        assert 0.5 <= servers.wait_quiet([busy], window_s=0.1, timeout_s=0.5) < 1.5
    finally:
        busy.process.kill()
        busy.process.wait()
