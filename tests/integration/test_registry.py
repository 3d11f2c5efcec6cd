"""The model registry (MLflow) and the repository: versions, aliases, promotion, and the front
ends refusing to start when the two disagree. The embedded store (SQLite and a folder) and a
real `mlflow server` process on loopback with PostgreSQL behind it, with the real digits
model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import httpx
import onnx
import psycopg
import pytest

from lifecycle import consistency
from lifecycle.promote import adopt, promote, publish_built
from lifecycle.registry import CHALLENGER, CHAMPION, Registry, digest
from lifecycle.settings import RegistrySettings
from offline.data import load_heldout
from offline.digits import encode_png
from runners.errors import RegistryError
from runners.repository import REGISTRY_STAMP, Repository
from tests.integration.conftest import (
    BENTOML,
    REPO_ROOT,
    bentoml_env,
    free_port,
    start_server,
    stop_server,
)
from tests.integration.postgres import postgres_server

COMMITTED = REPO_ROOT / "model_repository"
FAMILY = "digits"
DETECTOR = "detector"
VARIANTS = ("fp32", "int8")


def copy_committed(repository: Path, variants: tuple[str, ...] = VARIANTS) -> Path:
    repository.mkdir(parents=True, exist_ok=True)
    for variant in variants:
        shutil.copytree(
            COMMITTED / f"{FAMILY}_{variant}",
            repository / f"{FAMILY}_{variant}",
            ignore=shutil.ignore_patterns(REGISTRY_STAMP),
        )
    return repository


def rebuild(tag: str, variants: tuple[str, ...] = VARIANTS) -> Callable[[Path], None]:
    """A build of the same network whose files differ (their doc string): a new version that
    answers as the old one does."""

    def build(staging: Path) -> None:
        copy_committed(staging, variants)
        for variant in variants:
            path = staging / f"{FAMILY}_{variant}" / "1" / "model.onnx"
            model = onnx.load(str(path))
            model.doc_string = f"digits {variant}, build {tag}"
            path.unlink()  # the copy may share its inode with the committed file
            onnx.save(model, str(path))

    return build


@pytest.fixture
def embedded(tmp_path: Path) -> Registry:
    return Registry(RegistrySettings(data_dir=tmp_path / "data"))


def test_a_committed_model_is_adopted_as_version_1_champion(
    tmp_path: Path, embedded: Registry
) -> None:
    repository = copy_committed(tmp_path / "repo")
    assert not embedded.settings.exists()
    standing = consistency.check(repository, [FAMILY], embedded.settings)
    assert standing[FAMILY].registered is False  # no registry: served unregistered
    assert not embedded.settings.exists(), "checking must not create a store"
    version = adopt(embedded, repository, FAMILY)
    assert version is not None and version.number == 1
    assert embedded.aliases(FAMILY) == {CHAMPION: 1}
    assert adopt(embedded, repository, FAMILY) is None  # once
    assert consistency.check(repository, [FAMILY], embedded.settings)[FAMILY].registered
    for variant in VARIANTS:
        served = COMMITTED / f"{FAMILY}_{variant}" / "1" / "model.onnx"
        assert version.digests[variant] == digest(served)
    # What the run recorded: parameters, metrics from the card, the CPU, every file.
    run = embedded.client.get_run(version.run_id)
    assert run.data.params["quantization_method"]
    assert json.loads(run.data.params["preprocess"])["color_mode"] == "L"
    assert 0.9 < run.data.metrics["top1.fp32"] <= 1.0
    assert "top1.int8" in run.data.metrics and "bytes.int8" in run.data.metrics
    assert any(key.startswith("images_per_s.int8.") for key in run.data.metrics)
    assert run.data.tags["cpu"]
    files = {a.path for a in embedded.client.list_artifacts(version.run_id, "model/int8")}
    assert "model/int8/model.onnx" in files and "model/int8/model_card.json" in files
    assert "model/int8/drift_reference.json" in files


def test_the_committed_detector_is_adopted_as_it_is(tmp_path: Path, embedded: Registry) -> None:
    """What `python -m offline models` (`make serve`) does with the committed digit detector:
    version 1 and champion, its files untouched, so that it can be rolled out like the
    digits."""
    repository = tmp_path / "repo"
    for variant in VARIANTS:
        shutil.copytree(
            COMMITTED / f"{DETECTOR}_{variant}",
            repository / f"{DETECTOR}_{variant}",
            ignore=shutil.ignore_patterns(REGISTRY_STAMP),
        )
    version = adopt(embedded, repository, DETECTOR)
    assert version is not None and version.number == 1
    assert embedded.aliases(DETECTOR) == {CHAMPION: 1}
    for variant in VARIANTS:
        served = repository / f"{DETECTOR}_{variant}" / "1" / "model.onnx"
        assert version.digests[variant] == digest(served)
        assert digest(served) == digest(COMMITTED / f"{DETECTOR}_{variant}" / "1" / "model.onnx")
    assert consistency.check(repository, [DETECTOR], embedded.settings)[DETECTOR].registered


def test_a_new_build_is_the_challenger_until_promoted(tmp_path: Path, embedded: Registry) -> None:
    repository = copy_committed(tmp_path / "repo")
    adopt(embedded, repository, FAMILY)
    published = publish_built(embedded, repository, FAMILY, rebuild("2"), "rebuilt")
    assert published.version.number == 2 and not published.promoted
    assert embedded.aliases(FAMILY) == {CHAMPION: 1, CHALLENGER: 2}
    assert Repository(repository).get(FAMILY, "fp32").version == 1  # untouched
    assert consistency.check(repository, [FAMILY], embedded.settings)[FAMILY].version == 1

    promote(embedded, repository, FAMILY, 2)
    assert embedded.aliases(FAMILY) == {CHAMPION: 2}
    for variant in VARIANTS:
        entry = Repository(repository).get(FAMILY, variant)
        assert entry.version == 2
        assert sorted(p.name for p in entry.directory.iterdir() if p.is_dir()) == ["2"]
        assert "specific" in (entry.directory / "config.pbtxt").read_text()
        assert entry.registration() == {
            "registry": embedded.where,
            "model": FAMILY,
            "version": 2,
            "run_id": published.version.run_id,
            "variant": variant,
            "sha256": digest(entry.onnx_path),
        }
    assert consistency.check(repository, [FAMILY], embedded.settings)[FAMILY].version == 2
    assert not list(repository.glob(".*")), "no scratch folder is left in the repository"


def test_registry_and_repository_that_disagree_are_refused(
    tmp_path: Path, embedded: Registry
) -> None:
    repository = copy_committed(tmp_path / "repo")
    adopt(embedded, repository, FAMILY)
    second = embedded.record(FAMILY, copy_committed(tmp_path / "v2"), "the same files again")
    assert second.number == 2

    embedded.set_alias(FAMILY, CHAMPION, 2)  # the alias moved, the repository did not
    with pytest.raises(RegistryError, match="python -m offline promote digits 2"):
        consistency.check(repository, [FAMILY], embedded.settings)
    embedded.set_alias(FAMILY, CHAMPION, 1)

    # A crash between writing the repository and moving the alias: the repository serves 2.
    with (
        mock.patch.object(Registry, "set_alias", side_effect=RegistryError("injected")),
        pytest.raises(RegistryError, match="injected"),
    ):
        promote(embedded, repository, FAMILY, 2)
    with pytest.raises(
        RegistryError, match=r"version 1 of digits is the champion.*serves version 2"
    ):
        consistency.check(repository, [FAMILY], embedded.settings)
    promote(embedded, repository, FAMILY, 2)  # finishing it reconciles them
    consistency.check(repository, [FAMILY], embedded.settings)

    # A file changed behind the registry's back.
    onnx_path = Repository(repository).get(FAMILY, "int8").onnx_path
    data = bytearray(onnx_path.read_bytes())
    onnx_path.unlink()
    onnx_path.write_bytes(bytes(data) + b"\0")
    with pytest.raises(RegistryError, match="built or changed outside the registry"):
        consistency.check(repository, [FAMILY], embedded.settings)

    # A repository built outside the registry, for a model the registry knows.
    fresh = copy_committed(tmp_path / "elsewhere")
    fresh_fp32 = Repository(fresh).get(FAMILY, "fp32").onnx_path
    model = onnx.load(str(fresh_fp32))
    model.doc_string = "built by hand"
    fresh_fp32.unlink()
    onnx.save(model, str(fresh_fp32))
    with pytest.raises(RegistryError, match="champion"):
        consistency.check(fresh, [FAMILY], embedded.settings)

    # A repository promoted from a registry this server is not pointed at.
    other = Registry(RegistrySettings(data_dir=tmp_path / "other"))
    with pytest.raises(RegistryError, match="has no model 'digits'"):
        consistency.check(repository, [FAMILY], other.settings)


def test_promoting_a_version_without_a_variant_removes_that_variant(
    tmp_path: Path, embedded: Registry
) -> None:
    repository = copy_committed(tmp_path / "repo")
    adopt(embedded, repository, FAMILY)
    only_fp32 = publish_built(
        embedded, repository, FAMILY, rebuild("fp32 only", ("fp32",)), "fp32 only"
    )
    promote(embedded, repository, FAMILY, only_fp32.version.number)
    assert sorted(Repository(repository).families()[FAMILY]) == ["fp32"]
    consistency.check(repository, [FAMILY], embedded.settings)


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A real `mlflow server` as a team runs it: PostgreSQL behind it (a real server on
    loopback), artifacts served through it. Its URL, and the database's."""
    home = tmp_path_factory.mktemp("mlflow_server")
    with postgres_server() as store, (home / "server.log").open("wb") as log:
        port = free_port()
        command = [
            str(Path(sys.executable).with_name("mlflow")), "server",
            "--backend-store-uri", store,
            "--artifacts-destination", str(home / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ]  # fmt: skip
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        try:
            while True:
                assert process.poll() is None, (home / "server.log").read_text()
                assert time.monotonic() < deadline, "mlflow server not up after 120 s"
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
            yield url, store
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


def test_a_tracking_server_registry_is_what_both_front_ends_check(
    tmp_path: Path, tracking_server: tuple[str, str]
) -> None:
    url, database = tracking_server
    settings = RegistrySettings(data_dir=tmp_path / "data", registry_uri=url)
    registry = Registry(settings)
    repository = copy_committed(tmp_path / "repo")
    assert adopt(registry, repository, FAMILY) is not None
    published = publish_built(registry, repository, FAMILY, rebuild("server"), "rebuilt")
    promote(registry, repository, FAMILY, published.version.number)
    version = published.version.number
    assert not (tmp_path / "data").exists(), "a server registry keeps nothing locally"
    artifacts = registry.client.get_run(published.version.run_id).info.artifact_uri
    assert artifacts.startswith("mlflow-artifacts:"), "artifacts go through the server"
    with psycopg.connect(database.replace("postgresql+psycopg", "postgresql")) as connection:
        stored = connection.execute(
            "SELECT version FROM model_versions WHERE name = %s ORDER BY version", (FAMILY,)
        ).fetchall()
    assert [row[0] for row in stored] == [1, version], "the versions live in PostgreSQL"

    home, env = bentoml_env(
        tmp_path,
        {
            "IMGSERVE_REPOSITORY": str(repository),
            "IMGSERVE_REGISTRY_URI": url,
        },
    )
    server = start_server("service:ImageClassifier", REPO_ROOT, home / "server.log", env)
    try:
        images, labels = load_heldout()
        with httpx.Client(base_url=server.url, timeout=10) as client:
            answer = client.post(
                "/v1/classify", files={"image": ("d.png", encode_png(images[0]), "image/png")}
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["model_version"] == version
            assert answer.json()["predictions"][0]["label"] == str(labels[0])
            described = client.get("/v1/models").json()["models"][0]
            assert described["registry"]["version"] == version
            assert {v["version"] for v in described["variants"]} == {version}
    finally:
        stop_server(server)

    registry.set_alias(FAMILY, CHAMPION, 1)  # now the registry says 1, the repository 2
    for command in (
        [BENTOML, "serve", "service:ImageClassifier", "--port", str(free_port())],
        [sys.executable, "-m", "triton_server", "--repository", str(repository)],
    ):
        refused = subprocess.run(
            command,
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        said = refused.stdout + refused.stderr
        assert refused.returncode == 1, said
        assert "python -m offline promote digits 1" in said
