from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from runners import repository
from runners.errors import NotFound, RepositoryError
from runners.preprocessing import PreprocessSpec
from runners.repository import (
    TRITON_BACKEND,
    Batching,
    ModelEntry,
    Repository,
    TensorSpec,
    read_model,
    render_config,
    write_model,
)
from tests.models import tiny_classifier

REPO_ROOT = Path(__file__).resolve().parents[2]


def make_entry(root: Path, variant: str = "fp32", max_batch_size: int = 8) -> ModelEntry:
    spec = PreprocessSpec(height=8, width=8, color_mode="L")
    return ModelEntry(
        name=f"tiny_{variant}",
        family="tiny",
        variant=variant,  # type: ignore[arg-type]
        version=1,
        directory=root / f"tiny_{variant}",
        inputs=(TensorSpec(name="input", dims=spec.sample_shape),),
        outputs=(TensorSpec(name="logits", dims=(3,)),),
        labels=("a", "b", "c"),
        preprocess=spec,
        batching=Batching(
            max_batch_size=max_batch_size, preferred_batch_sizes=(4,), max_queue_delay_us=1500
        ),
    )


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    onnx_file = tiny_classifier(tmp_path / "src" / "model.onnx")
    entry = make_entry(tmp_path / "repo")
    written = write_model(entry, onnx_file, {"model_card.json": "{}"})
    assert written == entry
    assert written.onnx_path.is_file()
    assert (entry.directory / "labels.txt").read_text() == "a\nb\nc\n"
    assert written.batching.max_latency_ms == 1.5
    assert not list((tmp_path / "repo").glob(".*")), "staging folders must not be left behind"


def test_a_reread_parses_only_what_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pollers read the repository every second: an unchanged directory costs no parse, and
    any change to what it holds (here the labels, rewritten in place at the same length) is
    read at once."""
    entry = write_model(make_entry(tmp_path), tiny_classifier(tmp_path / "src" / "model.onnx"))
    parses: list[str] = []
    parse = repository.parse_config

    def counted(text: str, source: str = "") -> object:
        parses.append(source)
        return parse(text, source)

    monkeypatch.setattr(repository, "parse_config", counted)
    repository._entry.cache_clear()
    assert read_model(entry.directory) == read_model(entry.directory) == entry
    assert len(parses) == 1
    (entry.directory / "labels.txt").write_text("x\ny\nz\n")
    assert read_model(entry.directory).labels == ("x", "y", "z")
    assert len(parses) == 2


def test_rendered_config_is_a_triton_model_config(tmp_path: Path) -> None:
    text = render_config(make_entry(tmp_path))
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.backend == "onnxruntime"
    assert config.max_batch_size == 8
    assert list(config.input[0].dims) == [1, 8, 8]
    assert config.output[0].label_filename == "labels.txt"
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 256
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_unbatched_models_list_their_batch_axis(tmp_path: Path) -> None:
    onnx_file = tiny_classifier(tmp_path / "src" / "model.onnx")
    entry = make_entry(tmp_path / "repo", max_batch_size=0)
    write_model(entry, onnx_file)
    config = text_format.Parse(
        (entry.directory / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert list(config.input[0].dims) == [1, 1, 8, 8]
    assert not config.HasField("dynamic_batching")
    assert read_model(entry.directory).inputs[0].dims == (1, 8, 8)


def test_repository_groups_variants_and_names_what_exists(tmp_path: Path) -> None:
    onnx_file = tiny_classifier(tmp_path / "src" / "model.onnx")
    for variant in ("fp32", "int8"):
        write_model(make_entry(tmp_path / "repo", variant), onnx_file)
    repo = Repository(tmp_path / "repo")
    assert set(repo.families()["tiny"]) == {"fp32", "int8"}
    assert repo.get("tiny", "int8").name == "tiny_int8"
    with pytest.raises(NotFound, match="models: tiny"):
        repo.get("resnet", "fp32")
    with pytest.raises(NotFound, match="variants: fp32, int8"):
        repo.get("tiny", "fp16")


def test_malformed_config_names_the_file(tmp_path: Path) -> None:
    onnx_file = tiny_classifier(tmp_path / "src" / "model.onnx")
    entry = make_entry(tmp_path / "repo")
    write_model(entry, onnx_file)
    (entry.directory / "config.pbtxt").write_text("max_batch_size: lots\n")
    with pytest.raises(RepositoryError, match=r"config\.pbtxt is not a valid Triton ModelConfig"):
        read_model(entry.directory)


def test_missing_labels_name_the_file(tmp_path: Path) -> None:
    onnx_file = tiny_classifier(tmp_path / "src" / "model.onnx")
    entry = make_entry(tmp_path / "repo")
    write_model(entry, onnx_file)
    (entry.directory / "labels.txt").unlink()
    with pytest.raises(RepositoryError, match=r"labels\.txt is missing"):
        read_model(entry.directory)


def test_labels_must_match_output_dims(tmp_path: Path) -> None:
    onnx_file = tiny_classifier(tmp_path / "src" / "model.onnx")
    entry = make_entry(tmp_path / "repo")
    write_model(entry, onnx_file)
    (entry.directory / "labels.txt").write_text("a\nb\n")
    with pytest.raises(RepositoryError, match="2 labels"):
        read_model(entry.directory)


def test_spec_must_match_input_dims(tmp_path: Path) -> None:
    entry = make_entry(tmp_path / "repo")
    wrong = entry.model_copy(update={"inputs": (TensorSpec(name="input", dims=(3, 8, 8)),)})
    onnx_file = tiny_classifier(tmp_path / "src" / "model.onnx")
    with pytest.raises(RepositoryError, match="contradict the preprocessing"):
        write_model(wrong, onnx_file)
    assert not entry.directory.exists()


def test_every_config_in_the_repository_parses_as_model_config() -> None:
    """The committed entries, and any a `make profiles` or `make detector` added: each one's
    backend is the official container's for its precision."""
    configs = sorted((REPO_ROOT / "model_repository").glob("*/config.pbtxt"))
    assert {p.parent.name for p in configs} >= {"digits_fp32", "digits_int8"}
    for path in configs:
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        assert config.name == path.parent.name
        entry = read_model(path.parent)
        assert config.backend == TRITON_BACKEND[entry.precision], path
