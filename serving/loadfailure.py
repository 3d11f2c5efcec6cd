"""A runner whose model fails to load stops `bentoml serve`, which then exits 1.

`service.py` checks every model file in the arbiter before any worker starts, but a file can
pass that check and still fail in its engine (an operator from a library the engine lacks, a
model too big for memory). On its own, BentoML restarts such a runner forever while /livez
answers 200 and /readyz 503. Instead the runner writes its error to a file the arbiter named
(`arm`), logs it, and sends the arbiter SIGTERM (the ordinary graceful stop); when the
arbiter's interpreter exits, it finds the file, logs the error once more as its last line and
exits 1 (`service.py` says why an exit is the right failure under Kubernetes).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import tempfile
from pathlib import Path

from serving import bentoml_compat

logger = logging.getLogger("serving")

# Not an IMGSERVE_ setting: the arbiter sets it for its workers, nobody else.
ENV = "IMGSERVE_INTERNAL_LOAD_FAILURE_FILE"


def arm() -> None:
    """In the arbiter, before any worker starts: name the file and exit 1 if it appears."""
    path = Path(tempfile.mkdtemp(prefix="imgserve-load-")) / "failed"
    os.environ[ENV] = str(path)
    # Registered first, so it runs last: every other exit handler has run by then.
    atexit.register(_exit_if_failed, path)


def _exit_if_failed(path: Path) -> None:
    try:
        message = path.read_text()
    except OSError:
        message = None
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
        path.parent.rmdir()
    if message is not None:
        logger.error("stopped: %s", message)
        os._exit(1)  # the only way an exit handler can set the status


def stop_the_server(message: str) -> None:
    """In a runner worker: record the error and stop the arbiter (its parent)."""
    path = os.environ.get(ENV)
    if not path:
        return  # not under an armed `bentoml serve` (a test that builds the runner alone)
    Path(path).write_text(message)
    logger.error("%s; stopping the server", message)
    os.kill(bentoml_compat.arbiter_pid(), signal.SIGTERM)
