"""What `serving.bentoml_compat` relies on, checked against the installed BentoML: an upgrade
that changes any of it fails here, naming it."""

from __future__ import annotations

import inspect
import socket
import sys
from typing import Any

import _bentoml_impl.server.serving as bentoml_serving
import _bentoml_impl.worker.service as bentoml_worker
import bentoml
import pytest

from serving import bentoml_compat


def test_the_installed_bentoml_is_the_pinned_release() -> None:
    bentoml_compat.check_version()


def test_no_uds_is_bentomls_switch_to_loopback_tcp() -> None:
    assert bentoml_compat.NO_UDS in inspect.getsource(bentoml_serving._get_server_socket)


def test_bentoml_serve_names_its_multiprocess_folder_to_every_worker() -> None:
    assert bentoml_compat.MULTIPROCESS_DIR in inspect.getsource(bentoml_serving)


def test_a_worker_gets_its_listening_socket_as_fd(monkeypatch: pytest.MonkeyPatch) -> None:
    assert '"--fd"' in inspect.getsource(bentoml_worker)
    monkeypatch.setattr(sys, "argv", ["worker", "--fd", "7", "--worker-id", "1"])
    assert bentoml_compat.listening_fd() == 7
    monkeypatch.setattr(sys, "argv", ["worker"])
    assert bentoml_compat.listening_fd() is None


def test_outside_bentoml_serve_there_is_no_worker_index() -> None:
    assert bentoml_compat.worker_index() is None


@bentoml.service(name="compat_probe", **bentoml_compat.service_config())
class _Probe:
    @bentoml.api
    def echo(self, text: str) -> str:
        return text


def test_the_service_config_is_accepted_and_turns_the_extras_off() -> None:
    probe: Any = _Probe
    config = probe.config
    assert config["metrics"]["enabled"] is False
    assert config["logging"]["access"]["enabled"] is False
    assert config["tracing"]["excluded_urls"] == ["/"]
    assert config["runner_probe"]["enabled"] is False


def test_the_health_endpoints_probe_runners_only_when_the_runner_probe_is_on() -> None:
    import _bentoml_impl.server.app as bentoml_app

    assert "runner_probe.enabled" in inspect.getsource(bentoml_app.ServiceAppFactory.readyz)
    probe: Any = _Probe
    probe.inject_config()
    from bentoml._internal.configuration.containers import BentoMLContainer

    assert BentoMLContainer.api_server_config.runner_probe.enabled.get() is False


def test_serve_outermost_wraps_the_app_bentoml_builds() -> None:
    seen: list[Any] = []

    def wrap(app: Any) -> Any:
        seen.append(app)
        return ("wrapped", app)

    service: Any = bentoml.service(name="compat_wrapped")(type("Wrapped", (), {}))
    bentoml_compat.serve_outermost(service, wrap)
    served = service.to_asgi()
    assert served == ("wrapped", seen[0]) and callable(seen[0])


def test_a_service_class_without_to_asgi_is_refused() -> None:
    class Changed:
        pass

    with pytest.raises(bentoml_compat.BentoMLChanged, match="to_asgi"):
        bentoml_compat.serve_outermost(Changed(), lambda app: app)


def test_runner_sockets_reserve_their_ports_through_the_patched_function(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert "reserve_free_port()" in inspect.getsource(bentoml_serving._get_server_socket)
    monkeypatch.setattr(bentoml_serving, "reserve_free_port", bentoml_serving.reserve_free_port)
    monkeypatch.setenv(bentoml_compat.NO_UDS, "1")  # restored after the test
    bentoml_compat.use_loopback_runner_sockets()
    assert bentoml_serving.reserve_free_port is (
        bentoml_compat.reserve_port_outside_the_ephemeral_range
    )


def test_a_reserved_runner_port_is_outside_the_ephemeral_range_and_held() -> None:
    low, high = bentoml_compat._ephemeral_range()
    with bentoml_compat.reserve_port_outside_the_ephemeral_range() as port:
        assert not low <= port <= high and port >= bentoml_compat.LOWEST_RUNNER_PORT
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))  # released on exit
