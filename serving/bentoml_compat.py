"""Every place where this project relies on BentoML's internals, kept in one module.

The pinned release (`bentoml>=1.4,<1.5` in pyproject.toml) is what these rely on; each
function checks the fact it relies on where that is cheap, and `tests/unit/
test_bentoml_compat.py` checks every one against the installed release, so an upgrade that
changes one fails there, naming it, rather than in production.

- `serve_outermost`: BentoML builds the ASGI app its worker serves in `Service.to_asgi`;
  wrapping that method is the only way to put an ASGI layer outside BentoML's own middleware
  (`add_asgi_middleware` adds inside it).
- `use_loopback_runner_sockets`: `BENTOML_NO_UDS` is BentoML's own switch from Unix to
  loopback TCP sockets between services, whose ports `_get_server_socket` reserves through
  the `reserve_free_port` its module imports.
- `worker_index`, `arbiter_pid`, `listening_fd`, `multiprocess_dir`: what a process learns
  about the `bentoml serve` it belongs to: its worker number (None in the arbiter, the
  `bentoml serve` process, which imports the service module first), its parent (the circus
  arbiter that starts every worker), the listening socket the arbiter hands to a worker
  (its `--fd` argument), and the Prometheus multiprocess folder `bentoml serve` empties at
  start and names to every worker.
- `service_config`: the service config keys that turn BentoML's per-request extras and its
  own runner probe off.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import random
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bentoml

PINNED = ((1, 4), (1, 5))  # [from, to) as in pyproject.toml
NO_UDS = "BENTOML_NO_UDS"
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_RUNNER_PORT = 20000  # above the ports services are commonly configured on
RESERVE_TRIES = 50
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

ASGIApp = Any
Wrap = Callable[[ASGIApp], ASGIApp]


class BentoMLChanged(RuntimeError):
    """The installed BentoML lacks what this module relies on."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"BentoML {bentoml.__version__} no longer has {what}, which this project relies "
            "on (serving/bentoml_compat.py); use the bentoml version in pyproject.toml"
        )


def check_version() -> None:
    """The installed BentoML is the pinned minor release."""
    major, minor = (int(part) for part in bentoml.__version__.split(".")[:2])
    if not PINNED[0] <= (major, minor) < PINNED[1]:
        raise BentoMLChanged(f"the {PINNED[0][0]}.{PINNED[0][1]} release line")


def serve_outermost(service: Any, wrap: Wrap) -> None:
    """Make `service` (a `bentoml.Service`) serve `wrap(the app BentoML builds)`.

    The service keeps its class's layout: its class becomes a subclass whose `to_asgi` (what
    BentoML's worker calls to build the app it serves) returns the wrapped app.
    """
    method = getattr(type(service), "to_asgi", None)
    if method is None or "is_main" not in inspect.signature(method).parameters:
        raise BentoMLChanged("Service.to_asgi(is_main)")

    class ServedOutermost(type(service)):  # type: ignore[misc]
        __slots__ = ()  # the same layout: the instance can take this class

        def to_asgi(self, is_main: bool = True) -> ASGIApp:
            return wrap(super().to_asgi(is_main))

    service.__class__ = ServedOutermost


def use_loopback_runner_sockets() -> None:
    """Services talk over loopback TCP instead of Unix sockets; call before `bentoml serve`
    creates its sockets (importing the service module, which the arbiter does first, is).

    BentoML's arbiter deletes the folder of the services' Unix sockets as the first step of
    its stop (an exit-stack callback that runs before it signals the workers), so a draining
    entry could not reach a runner that still serves. A TCP socket has no file to lose. A
    value the user set is kept. Their ports come from outside the ephemeral range
    (`reserve_port_outside_the_ephemeral_range`).
    """
    os.environ.setdefault(NO_UDS, "1")
    import _bentoml_impl.server.serving as bentoml_serving

    if not hasattr(bentoml_serving, "reserve_free_port"):
        raise BentoMLChanged("_bentoml_impl.server.serving.reserve_free_port")
    bentoml_serving.reserve_free_port = reserve_port_outside_the_ephemeral_range


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands out by itself (outgoing connections, binds to port 0)."""
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


@contextlib.contextmanager
def reserve_port_outside_the_ephemeral_range(host: str = "127.0.0.1", **_: Any) -> Iterator[int]:
    """A free loopback port outside the ephemeral range, held until the context exits.

    BentoML reserves the ports of the sockets between its services, releases them, and only
    then does its arbiter bind them. A port of the ephemeral range (its own choice) can be
    taken in between by any outgoing connection on the machine, and the start fails ("Could
    not bind"); a port outside it only by a process that binds that very port.
    """
    low, high = _ephemeral_range()
    candidates = [port for port in range(LOWEST_RUNNER_PORT, 65536) if not low <= port <= high]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        for port in random.sample(candidates, min(RESERVE_TRIES, len(candidates))):
            try:
                sock.bind((host, port))
                break
            except OSError:
                continue
        else:
            sock.bind((host, 0))  # every try taken: the kernel's choice, as BentoML's own
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def worker_index() -> int | None:
    """This worker's number (from 1), or None in the arbiter and outside `bentoml serve`."""
    index: int | None = bentoml.server_context.worker_index
    return index


def arbiter_pid() -> int:
    """The pid of the `bentoml serve` process this worker belongs to: its parent."""
    return os.getppid()


def listening_fd() -> int | None:
    """The listening socket the arbiter gave this worker (its `--fd` argument), if any."""
    argv = sys.argv
    for i, arg in enumerate(argv[:-1]):
        if arg == "--fd" and argv[i + 1].isdigit():
            return int(argv[i + 1])
    return None


def multiprocess_dir() -> str | None:
    """The Prometheus multiprocess folder of this `bentoml serve`, None outside one."""
    return os.environ.get(MULTIPROCESS_DIR)


def service_config(trace_requests: bool = False) -> dict[str, Any]:
    """Config for `bentoml.service(**...)` (a fresh dict: BentoML merges into it).

    BentoML's request metrics label by raw path (a random path is a new series) and its
    access log costs CPU per request: the project's own metrics replace the first, the second
    is off. Its OpenTelemetry middleware opens a span per request even with no exporter
    configured, so tracing is opt-in (`trace_requests`). Its health endpoints probe the
    runners again after the service's own answer, so that probe is off.
    """
    config: dict[str, Any] = {
        "metrics": {"enabled": False},
        "logging": {"access": {"enabled": False}},
        # The entry's own readiness and liveness probe its runners (`Gateway.runners_alive`,
        # a short timeout each); BentoML's second probe after it waits up to 5 s a runner,
        # longer than a probe's client waits when the runners are busy.
        "runner_probe": {"enabled": False},
    }
    if not trace_requests:
        config["tracing"] = {"excluded_urls": ["/"]}  # a pattern every path matches
    return config
