from pathlib import Path

import numpy as np
import pytest

from runners.backends import BACKENDS, create_backend
from runners.errors import InvalidTensor, ModelLoadError, NotFound
from runners.settings import BackendSettings
from tests.models import tiny_classifier


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_classifier(tmp_path_factory.mktemp("tiny") / "model.onnx", channels=3, size=8)


@pytest.mark.parametrize("name", list(BACKENDS))
def test_backend_runs_a_batch_and_describes_tensors(name: str, model_path: Path) -> None:
    backend = create_backend(name, model_path, BackendSettings(intra_op_threads=1))
    backend.load()
    assert backend.input.name == "input"
    assert backend.input.shape == (None, 3, 8, 8)
    assert backend.output.shape == (None, 3)
    batch = np.random.default_rng(1).standard_normal((5, 3, 8, 8)).astype(np.float32)
    out = backend.infer(batch)
    assert out.shape == (5, 3)
    assert np.isfinite(out).all()
    backend.warmup((1, 4))


def test_backends_agree(model_path: Path) -> None:
    batch = np.random.default_rng(2).standard_normal((64, 3, 8, 8)).astype(np.float32)
    outputs = []
    for name in BACKENDS:
        backend = create_backend(name, model_path)
        backend.load()
        outputs.append(backend.infer(batch))
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(BACKENDS))
def test_rows_are_independent_of_batch_neighbours(name: str, model_path: Path) -> None:
    backend = create_backend(name, model_path)
    backend.load()
    batch = np.random.default_rng(3).standard_normal((6, 3, 8, 8)).astype(np.float32)
    together = backend.infer(batch)
    alone = np.concatenate([backend.infer(batch[i : i + 1]) for i in range(6)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(BACKENDS))
def test_wrong_dtype_and_shape_are_invalid_tensors(name: str, model_path: Path) -> None:
    backend = create_backend(name, model_path)
    backend.load()
    with pytest.raises(InvalidTensor, match="dtype"):
        backend.infer(np.zeros((1, 3, 8, 8), dtype=np.float64))
    with pytest.raises(InvalidTensor, match="shape"):
        backend.infer(np.zeros((1, 3, 9, 8), dtype=np.float32))
    with pytest.raises(InvalidTensor, match="shape"):
        backend.infer(np.zeros((3, 8, 8), dtype=np.float32))


@pytest.mark.parametrize("name", list(BACKENDS))
def test_missing_and_corrupt_files_name_the_file(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "absent.onnx"
    with pytest.raises(ModelLoadError, match=r"absent\.onnx"):
        create_backend(name, missing).load()
    good = tiny_classifier(tmp_path / "good.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=r"truncated\.onnx"):
        create_backend(name, truncated).load()


def test_unloaded_backend_and_unknown_backend() -> None:
    backend = create_backend("onnxruntime", Path("nowhere.onnx"))
    with pytest.raises(ModelLoadError, match="not loaded"):
        _ = backend.input
    with pytest.raises(NotFound, match="onnxruntime, openvino"):
        create_backend("tensorflow", Path("x.onnx"))


def test_settings_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "serving.toml").write_text('intra_op_threads = 3\nopenvino_hint = "THROUGHPUT"\n')
    assert BackendSettings().intra_op_threads == 3
    monkeypatch.setenv("IMGSERVE_INTRA_OP_THREADS", "2")
    assert BackendSettings().intra_op_threads == 2
    assert BackendSettings().openvino_hint == "THROUGHPUT"
    assert BackendSettings(intra_op_threads=1).intra_op_threads == 1
