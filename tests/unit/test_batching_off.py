"""Batching off (`IMGSERVE_BATCHING=false`) is read from the same repository by both front
ends: batches of one, no batching delay, the queue bound kept; Triton gets no batcher."""

from runners.repository import Repository
from runners.settings import REPO_ROOT
from triton_server.model import model_config

ROOT = REPO_ROOT / "model_repository"


def test_the_repository_read_without_batching() -> None:
    batched = Repository(ROOT).get("digits", "fp32")
    unbatched = Repository(ROOT, batching=False).get("digits", "fp32")
    assert batched.batching.max_batch_size > 1
    assert unbatched.batching.max_batch_size == 1
    assert unbatched.batching.max_queue_delay_us == 0
    assert unbatched.batching.preferred_batch_sizes == ()
    assert unbatched.batching.max_queue_size == batched.batching.max_queue_size
    assert unbatched.inputs == batched.inputs  # the signature keeps its batch axis


def test_triton_serves_it_without_a_dynamic_batcher() -> None:
    config = model_config(Repository(ROOT, batching=False).get("digits", "int8"))
    assert config.batching and config.max_batch_size == 1 and config.batcher is None
    batched = model_config(Repository(ROOT).get("digits", "int8"))
    assert batched.batcher is not None and batched.max_batch_size > 1
