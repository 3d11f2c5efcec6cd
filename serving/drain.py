"""Graceful shutdown of `bentoml serve`: the entry drains while the runners still serve.

How BentoML 1.4 stops: `bentoml serve` is a circus arbiter; on SIGTERM (what Kubernetes and
systemd send to it) it sends SIGTERM to every worker of every watcher at the same moment —
entry and runner services alike (circus `Arbiter._stop_watchers` stops all watchers at once,
whatever their priority) — waits for them (BentoML sets `graceful_timeout` to a day) and exits
0. Each worker is a uvicorn server, which on SIGTERM closes its own copy of the listening
socket and finishes the requests it holds. Two things go wrong under load (bare 500s and lost
connections): the runners stop under the entry's requests
(the entry's calls to them fail), and the arbiter keeps its own copy of the listening socket
open until every worker has exited, so connections that arrive meanwhile wait in the kernel's
backlog with nobody to accept them, and are reset at the end.

So each worker puts a handler in front of uvicorn's SIGTERM handler (uvicorn installs its
handler before the lifespan startup, where these are called) and hands the signal on to
uvicorn only when it may stop:

- the entry (`EntryDrain`): /readyz answers 503 at once; it keeps serving for
  `drain_delay_s` (0 by default: under Kubernetes the preStop sleep plays this part); then it
  shuts the listening socket down for every process that shares it, the arbiter included, so
  new connections are refused (a refused connection is one a balancer may retry anywhere);
  requests on kept-alive connections get 503 with `Connection: close`; it waits until every
  admitted request has its answer (bounded: each has the `request_timeout_s` deadline) and
  then lets uvicorn stop.
- a runner (`RunnerDrain`): it keeps serving until no entry worker is left. Every entry
  worker holds a shared `flock` on one file for its whole life; the kernel drops it when the
  process exits, however it exits, so a crashed entry never holds a runner up. The runner
  waits for the exclusive lock, bounded by the entry's own bound plus a margin.

Shutting the shared socket down stops new connections to every entry worker; that is right
here because the arbiter stops all of them together. Should the arbiter itself die (kill -9),
every worker gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and drains the same way. Only
SIGTERM drains: a second SIGTERM is ignored, and SIGINT (Ctrl+C at a terminal) stops a worker
at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from runners.errors import NotReady
from serving import bentoml_compat

logger = logging.getLogger("serving")

LOCK_NAME = "imgserve-entry.lock"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_S = 0.02
# How long a draining entry waits for clients to close kept-alive connections.
LINGER_S = 1.0
# What a runner adds to the entry's bound: the entry's last answers and its own exit.
RUNNER_MARGIN_S = 5.0

Handler = Callable[[int, FrameType | None], Any]


def entry_lock_path() -> Path:
    """One file per `bentoml serve`, known to the entry and every runner worker.

    It lives in the server's Prometheus multiprocess folder (`$BENTOML_HOME/
    prometheus_multiproc_dir`, given to every worker), which `bentoml serve` empties when it
    starts, so the file of a server that was killed outright does not outlive the next start;
    the arbiter's pid, the workers' common parent, names it.
    """
    folder = bentoml_compat.multiprocess_dir() or tempfile.gettempdir()
    return Path(folder) / f"{LOCK_NAME}.{bentoml_compat.arbiter_pid()}"


def shut_listener(fd: int) -> bool:
    """Stop the shared listening socket in every process that holds it.

    shutdown(2) acts on the socket itself, not on this process's descriptor: Linux takes it
    out of the listening state, resets the connections still waiting in its backlog (none of
    them was accepted), and refuses the ones that come after.
    """
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    with sock:
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return False
        with contextlib.suppress(OSError):  # already shut by a sibling worker
            sock.shutdown(socket.SHUT_RDWR)
        return True


def _sigterm_when_the_arbiter_dies() -> None:
    """Linux: SIGTERM this worker (so it drains and exits) if its parent dies, however it dies.

    Circus starts every worker in a session of its own, so a kill -9 of the arbiter, or of
    its process group, leaves the workers running and holding the server's port with nobody
    to stop them; a supervisor's restart of the server then cannot bind the port (and a
    balancer keeps sending requests to the orphans).
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        logger.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    elif os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


class _Drain:
    """SIGTERM chained in front of uvicorn's handler; `stop` hands it on when done."""

    def __init__(self) -> None:
        self._previous: Handler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.started: float | None = None

    def install(self) -> None:
        """Call from a lifespan startup hook, inside uvicorn, on the main thread."""
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            logger.warning("no server SIGTERM handler to chain: shutdown will not drain")
            return
        self._previous = previous
        self._loop = asyncio.get_running_loop()
        signal.signal(signal.SIGTERM, self._on_signal)
        _sigterm_when_the_arbiter_dies()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._loop is None or self.started is not None:
            return  # draining already (the arbiter and a process-group kill both send one)
        self.started = time.monotonic()
        self._loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await self.drain()
        except Exception:
            logger.exception("draining failed; stopping now")
        finally:
            self.stop()

    async def drain(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self._previous is not None:
            self._previous(signal.SIGTERM, None)


class EntryDrain(_Drain):
    """The entry worker's shutdown: not ready, (serve a while,) refuse, finish, stop."""

    def __init__(self, delay_s: float, timeout_s: float, in_flight: Callable[[], int]) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.timeout_s = timeout_s
        self._in_flight = in_flight
        self.refusing = False
        self._lock_fd: int | None = None

    @property
    def stopping(self) -> bool:
        return self.started is not None

    def install(self) -> None:
        super().install()
        # Held until this process exits; the runners wait for it (see the module docstring).
        path = entry_lock_path()
        with contextlib.suppress(OSError):
            self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)

    def _open_connections(self) -> int:
        """Connections uvicorn holds open (its server is the owner of the chained handler)."""
        state = getattr(getattr(self._previous, "__self__", None), "server_state", None)
        return len(getattr(state, "connections", ()))

    def check_admission(self) -> None:
        if self.refusing:
            raise NotReady("the server is shutting down; send the request to another replica")

    async def drain(self) -> None:
        logger.info(
            "SIGTERM: not ready; %d requests in flight; serving %.1f s more, then refusing",
            self._in_flight(),
            self.delay_s,
        )
        await asyncio.sleep(self.delay_s)
        self.refusing = True
        fd = bentoml_compat.listening_fd()
        if fd is None or not shut_listener(fd):
            logger.warning("no listening socket to shut: new connections wait for the exit")
        deadline = time.monotonic() + self.timeout_s
        in_flight = self._in_flight()
        while in_flight and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
            in_flight = self._in_flight()
        # Requests already sent on kept-alive connections but not yet read would be reset by
        # the server's final close (unread data makes the kernel send RST): wait until the
        # clients have closed those connections after their 503, or a short while.
        linger_end = min(deadline, time.monotonic() + LINGER_S)
        while self._open_connections() and time.monotonic() < linger_end:
            await asyncio.sleep(POLL_S)
        took = time.monotonic() - (self.started or 0.0)
        if in_flight:
            logger.error("drain: %d requests still in flight after %.2f s", in_flight, took)
        else:
            logger.info("drain: every admitted request answered, %.2f s after SIGTERM", took)


class RunnerDrain(_Drain):
    """A runner worker's shutdown: serve on until no entry worker is left, then stop."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self.timeout_s = timeout_s
        self._path = entry_lock_path()
        self._lock_fd: int | None = None

    def install(self) -> None:
        super().install()
        # Opened now, so that every runner waits on the same file as the entry workers.
        with contextlib.suppress(OSError):
            self._lock_fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    async def drain(self) -> None:
        if self._lock_fd is None:
            return
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    logger.error("entry workers still running after %.1f s", self.timeout_s)
                    return
                await asyncio.sleep(POLL_S)
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        self._path.unlink(missing_ok=True)
        logger.info(
            "no entry worker left %.2f s after SIGTERM: stopping",
            time.monotonic() - (self.started or 0.0),
        )


def runner_bound_s(delay_s: float, request_timeout_s: float) -> float:
    """How long a runner serves on after SIGTERM at most."""
    return delay_s + request_timeout_s + RUNNER_MARGIN_S
