"""The PyTriton proxy patch: it applies to the pinned release, and the handshake between a
model's instances survives the moment when the first has bound its socket but not listened."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
import pytriton.proxy
from pytriton.proxy.communication import get_config_from_handshake_server

from triton_server import pytriton_compat

CONFIG = {"data_socket": "/tmp/x-data.sock", "authkey": "a2V5\n"}


def test_the_patch_applies_to_the_pinned_proxy() -> None:
    source = (Path(pytriton.proxy.__file__).parent / "model.py").read_text()
    patched = pytriton_compat.patch_proxy_source(source)
    compile(patched, "model.py", "exec")
    assert "_handshake_config(handshake_socket)" in patched
    with pytest.raises(RuntimeError, match="handshake"):
        pytriton_compat.patch_proxy_source(source.replace("handshake_server(handshake", "x("))


def _bound_not_listening(path: Path) -> socket.socket:
    """A Unix socket as asyncio's server has it between `bind` and `listen`."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    return server


def _listen_later(server: socket.socket, delay_s: float) -> threading.Thread:
    def serve() -> None:
        time.sleep(delay_s)
        server.listen(1)
        connection, _ = server.accept()
        with connection:
            assert connection.recv(64) == b"get_config\n"
            payload = json.dumps(CONFIG).encode()
            connection.sendall(len(payload).to_bytes(4, "big") + payload)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_a_connect_between_bind_and_listen_is_refused_by_pytritons_own_wait(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m-config.sock"
    with _bound_not_listening(path), pytest.raises(ConnectionRefusedError):
        get_config_from_handshake_server(path, timeout_s=5.0)


def test_the_patched_wait_gets_the_config_once_the_first_instance_listens(
    tmp_path: Path,
) -> None:
    namespace = {"get_config_from_handshake_server": get_config_from_handshake_server}
    exec(pytriton_compat.HANDSHAKE_WAIT, namespace)  # the function the patch adds
    path = tmp_path / "m-config.sock"
    with _bound_not_listening(path) as server:
        thread = _listen_later(server, delay_s=0.3)
        assert namespace["_handshake_config"](path, timeout_s=10.0) == CONFIG
        thread.join(5)
