from pathlib import Path

import numpy as np
import pytest

from runners.backends import BACKENDS, Backend, create_backend
from runners.errors import InvalidTensor, ModelLoadError, NotFound
from runners.precision import this_cpu
from runners.settings import BackendSettings
from tests.models import tiny_classifier, two_headed


def run(backend: Backend, batch: np.ndarray) -> np.ndarray:
    """The tiny classifier's one output for a batch of its one input."""
    return backend.infer({"input": batch})["logits"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_classifier(tmp_path_factory.mktemp("tiny") / "model.onnx", channels=3, size=8)


@pytest.mark.parametrize("name", list(BACKENDS))
def test_backend_runs_a_batch_and_describes_tensors(name: str, model_path: Path) -> None:
    backend = create_backend(name, model_path, BackendSettings(intra_op_threads=1))
    backend.load()
    (image,), (logits,) = backend.inputs, backend.outputs
    assert (image.name, image.shape) == ("input", (None, 3, 8, 8))
    assert (logits.name, logits.shape) == ("logits", (None, 3))
    batch = np.random.default_rng(1).standard_normal((5, 3, 8, 8)).astype(np.float32)
    outputs = backend.infer({"input": batch})
    assert set(outputs) == {"logits"}
    assert outputs["logits"].shape == (5, 3)
    assert np.isfinite(outputs["logits"]).all()
    backend.warmup((1, 4))


def test_backends_agree(model_path: Path) -> None:
    batch = np.random.default_rng(2).standard_normal((64, 3, 8, 8)).astype(np.float32)
    outputs = []
    for name in BACKENDS:
        backend = create_backend(name, model_path)
        backend.load()
        outputs.append(run(backend, batch))
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(BACKENDS))
def test_rows_are_independent_of_batch_neighbours(name: str, model_path: Path) -> None:
    backend = create_backend(name, model_path)
    backend.load()
    batch = np.random.default_rng(3).standard_normal((6, 3, 8, 8)).astype(np.float32)
    together = run(backend, batch)
    alone = np.concatenate([run(backend, batch[i : i + 1]) for i in range(6)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(BACKENDS))
def test_wrong_dtype_and_shape_are_invalid_tensors(name: str, model_path: Path) -> None:
    backend = create_backend(name, model_path)
    backend.load()
    with pytest.raises(InvalidTensor, match="input 'input' dtype"):
        run(backend, np.zeros((1, 3, 8, 8), dtype=np.float64))
    with pytest.raises(InvalidTensor, match="input 'input' shape"):
        run(backend, np.zeros((1, 3, 9, 8), dtype=np.float32))
    with pytest.raises(InvalidTensor, match="shape"):
        run(backend, np.zeros((3, 8, 8), dtype=np.float32))
    with pytest.raises(InvalidTensor, match=r"takes inputs \['input'\]; got \['image'\]"):
        backend.infer({"image": np.zeros((1, 3, 8, 8), dtype=np.float32)})


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
        _ = backend.inputs
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


def test_openvino_runs_fp32_in_fp32_on_every_cpu(model_path: Path) -> None:
    """The hint is explicit: left to itself the CPU plugin runs FP32 models in BF16 on AMX."""
    backend = create_backend("openvino", model_path, precision="fp32")
    backend.load()
    assert backend.runs_in == "fp32 (INFERENCE_PRECISION_HINT f32)"
    int8 = create_backend("openvino", model_path, precision="int8")
    int8.load()
    assert "f32 elsewhere" in int8.runs_in


def test_onnxruntime_has_no_bf16_mode(model_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="onnxruntime has no bf16 mode"):
        create_backend("onnxruntime", model_path, precision="bf16").load()


def test_openvino_bf16_runs_where_the_cpu_has_it_and_is_refused_elsewhere(
    model_path: Path,
) -> None:
    batch = np.random.default_rng(4).standard_normal((16, 3, 8, 8)).astype(np.float32)
    bf16 = create_backend("openvino", model_path, precision="bf16")
    if this_cpu().bf16:
        bf16.load()
        fp32 = create_backend("onnxruntime", model_path)
        fp32.load()
        assert bf16.runs_in == "bf16 (INFERENCE_PRECISION_HINT bf16)"
        # BF16 keeps 8 bits of mantissa: close to FP32's answers, not equal to them.
        np.testing.assert_allclose(run(bf16, batch), run(fp32, batch), rtol=0.05, atol=0.1)
    else:
        with pytest.raises(ModelLoadError, match="neither AMX-BF16 nor AVX512-BF16"):
            bf16.load()


def test_named_tensors_in_and_out_for_a_model_with_two_of_each(tmp_path: Path) -> None:
    """Engines are task-neutral: every input by name in, every output by name out."""
    path = two_headed(tmp_path / "two.onnx")
    batch = {
        "image": np.random.default_rng(5).standard_normal((4, 3)).astype(np.float32),
        "bias": np.ones((4, 3), np.float32),
    }
    answers = []
    for name in BACKENDS:
        backend = create_backend(name, path)
        backend.load()
        assert [t.name for t in backend.inputs] == ["image", "bias"]
        assert [t.name for t in backend.outputs] == ["sum", "double"]
        answers.append(backend.infer(batch))
        with pytest.raises(InvalidTensor, match="disagree on the batch size"):
            backend.infer({"image": batch["image"], "bias": batch["bias"][:2]})
    for outputs in answers:
        np.testing.assert_allclose(outputs["sum"], batch["image"] + 1, rtol=1e-6)
        np.testing.assert_allclose(outputs["double"], batch["image"] * 2, rtol=1e-6)


# A model loaded on one thread and dropped on another, then a signal to the loading thread:
# the way a version swap (the poller drops the old version) and then SIGTERM reach a server.
_LOAD_HERE_DROP_THERE = """
import gc, os, signal, sys, threading
from pathlib import Path
from runners.backends import create_backend
from runners.settings import BackendSettings
engines = []
for precision in ("fp32", "int8"):
    engine = create_backend("openvino", Path(sys.argv[1]), BackendSettings(), precision)
    engine.load()
    engines.append(engine)
del engine
def drop():
    engines.clear()
    gc.collect()
dropper = threading.Thread(target=drop)
dropper.start()
dropper.join()
handled = []
signal.signal(signal.SIGTERM, lambda *_: handled.append(True))
os.kill(os.getpid(), signal.SIGTERM)
print("handled" if handled else "not handled")
"""


def test_a_signal_after_an_openvino_model_is_dropped_on_another_thread_is_handled(
    model_path: Path,
) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_HERE_DROP_THERE, str(model_path)],
        cwd=root, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    # A dangling alternate signal stack makes the kernel kill the process with SIGSEGV.
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "handled"
