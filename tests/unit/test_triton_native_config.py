"""The native-mode model config is derived from the committed config.pbtxt: one source of
truth for batching, queue bound and instances; the tensors of the Triton form PyTriton mode
declares; backend "python"; and the parameters the stub reads."""

from pathlib import Path
from typing import Any

from google.protobuf import text_format

from runners.preprocessing import ImageLimits
from runners.repository import ModelEntry, Repository, parse_config
from runners.settings import REPO_ROOT, BackendSettings
from triton_server import model as triton_model
from triton_server import native

ROOT = REPO_ROOT / "model_repository"


METRICS = "http://127.0.0.1:8002/metrics"


def _config(batching: bool = True, bound_in_triton: bool = False) -> tuple[ModelEntry, Any]:
    entry = Repository(ROOT, batching=batching).get("digits", "fp32")
    text = native.model_config(
        entry,
        BackendSettings(),
        ImageLimits(),
        batching,
        metrics_url=METRICS,
        bound_in_triton=bound_in_triton,
        decode_threads=3,
    )
    return entry, parse_config(text)


def test_the_config_keeps_the_committed_batching_and_instances() -> None:
    entry, config = _config(bound_in_triton=True)
    committed = parse_config((entry.directory / "config.pbtxt").read_text())
    assert config.backend == "python"
    assert config.max_batch_size == committed.max_batch_size
    assert text_format.MessageToString(config.dynamic_batching) == text_format.MessageToString(
        committed.dynamic_batching
    )
    assert config.dynamic_batching.default_queue_policy.max_queue_size == (
        entry.batching.max_queue_size
    )
    assert [g.count for g in config.instance_group] == [entry.instances]
    parameters = {k: v.string_value for k, v in config.parameters.items()}
    assert parameters[native.QUEUE_BOUND] == "0"  # tritonserver keeps it
    assert parameters["project.precision"] == entry.precision  # the committed ones are kept
    assert Path(parameters[native.DIRECTORY]) == entry.directory
    assert Path(parameters[native.PROJECT]) == REPO_ROOT
    assert BackendSettings.model_validate_json(parameters[native.BACKEND]) == BackendSettings()


def test_the_tensors_are_the_ones_pytriton_mode_declares() -> None:
    entry, config = _config()
    assert [(i.name, list(i.dims), i.optional) for i in config.input] == [
        (t.name, list(t.shape), True) for t in triton_model.inputs(entry)
    ]
    assert [(o.name, list(o.dims)) for o in config.output] == [
        (t.name, list(t.shape)) for t in triton_model.outputs(entry)
    ]
    types = {t.name: t.data_type for t in [*config.input, *config.output]}
    assert types["image"] == types["label"] == 13  # TYPE_STRING: Triton's BYTES


def test_batching_off_has_no_dynamic_batcher() -> None:
    _, config = _config(batching=False)
    assert config.max_batch_size == 1
    assert not config.HasField("dynamic_batching")
    assert {k: v.string_value for k, v in config.parameters.items()}[native.BATCHING] == "false"


def test_by_default_the_stub_keeps_the_queue_bound_and_triton_prefetches() -> None:
    """A queue policy turns tritonserver's payload prefetching off (triton_server.queue_guard
    says what that costs), so the bound goes to the stub, with where to read the queue."""
    entry, config = _config()
    committed = parse_config((entry.directory / "config.pbtxt").read_text())
    assert not config.dynamic_batching.HasField("default_queue_policy")
    committed.dynamic_batching.ClearField("default_queue_policy")
    assert text_format.MessageToString(config.dynamic_batching) == text_format.MessageToString(
        committed.dynamic_batching
    )
    parameters = {k: v.string_value for k, v in config.parameters.items()}
    assert int(parameters[native.QUEUE_BOUND]) == entry.batching.max_queue_size > 0
    assert parameters[native.METRICS] == METRICS
    assert parameters[native.DECODE_THREADS] == "3"  # the stub's decoding threads


def test_instances_share_the_cores_their_engines_pick_threads_for() -> None:
    """Side by side, each instance's engine gets its share of the cores where the engine
    would pick its own thread count; a count the user set, or one instance, is left alone."""
    auto, chosen = BackendSettings(), BackendSettings(intra_op_threads=3)
    assert native.engine_settings(auto, 2, cores=16).intra_op_threads == 8
    assert native.engine_settings(auto, 3, cores=2).intra_op_threads == 1
    assert native.engine_settings(auto, 1, cores=16) == auto
    assert native.engine_settings(chosen, 2, cores=16) == chosen
    entry = Repository(ROOT).get("digits", "fp32").model_copy(update={"instances": 2})
    config = parse_config(native.model_config(entry, auto, ImageLimits()))
    parameters = {k: v.string_value for k, v in config.parameters.items()}
    assert [g.count for g in config.instance_group] == [2]
    assert BackendSettings.model_validate_json(parameters[native.BACKEND]) == (
        native.engine_settings(auto, 2)
    )
