"""A real PostgreSQL server for a test: Debian's package, a fresh cluster on a loopback port.

    with postgres_server() as url:    # postgresql+psycopg://postgres@127.0.0.1:PORT/postgres
        ...

The cluster lives in its own temporary folder and is removed afterwards. PostgreSQL refuses
to run as root, so under root the cluster belongs to the package's `postgres` user and its
programs run as that user (`runuser`); otherwise they run as the caller.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.integration.conftest import free_port

START_TIMEOUT_S = 60.0


def program(name: str) -> str:
    """A PostgreSQL program: on PATH, else in Debian's versioned folder (the newest)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"PostgreSQL's {name} is not installed: apt-get install postgresql")
    return candidates[-1]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A running server with trust authentication for `postgres` on 127.0.0.1; its URL."""
    root = Path(tempfile.mkdtemp(prefix="imgserve-pg-"))
    as_user: list[str] = []
    if os.getuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log = root / "data", root / "server.log"
    subprocess.run(
        [*as_user, program("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
         "-E", "UTF8", "--no-sync"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    port = free_port()
    output = log.open("wb")
    server = subprocess.Popen(
        [*as_user, program("postgres"), "-D", str(data), "-p", str(port), "-k", str(root),
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", f"log_directory={root}",
         "-c", "logging_collector=off"],
        stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            ready = subprocess.run(
                [program("pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"],
                capture_output=True,
                check=False,
            )
            if ready.returncode == 0:
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGINT)  # fast shutdown: sessions end, data kept
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        output.close()
        shutil.rmtree(root, ignore_errors=True)
