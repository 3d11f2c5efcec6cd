"""A detector on the Triton front end: BYTES images in, padded boxes, scores, classes and a
count out, boxes in each image's own pixels (tensor rows: the input's pixels).

The hand-built square detector of `tests.models.tiny_detector` on its own real
`tritonserver` (as `make serve-triton` starts it), in PyTriton mode and in native mode, so
the boxes are known exactly."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from runners.preprocessing import PreprocessSpec, decode_and_preprocess
from runners.repository import Batching, ModelEntry, TensorSpec, write_model
from tests.integration.squares import LABELS, canvas
from tests.integration.test_triton import TritonProcess, launch, stop
from tests.models import tiny_detector

pytestmark = pytest.mark.slow

MOST = 8
SPEC = PreprocessSpec(height=32, width=32, color_mode="L", resize="letterbox", resample="nearest")


@pytest.fixture(scope="module", params=["pytriton", "native"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonProcess]:
    """The detector in each Triton mode (`IMGSERVE_TRITON_MODE`)."""
    root = tmp_path_factory.mktemp("triton_detection")
    repository = root / "repo"
    write_model(
        ModelEntry(
            name="squares_fp32", family="squares", variant="fp32", version=1,
            directory=repository / "squares_fp32", task="detection",
            task_parameters={"score_threshold": "0.5", "max_detections": str(MOST)},
            inputs=(TensorSpec(name="images", dims=SPEC.sample_shape),),
            outputs=(TensorSpec(name="output0", dims=(4 + len(LABELS), 16)),),
            labels=LABELS, preprocess=SPEC,
            batching=Batching(max_batch_size=8, max_queue_delay_us=1000),
        ),
        tiny_detector(root / "src" / "model.onnx", size=32, classes=len(LABELS)),
    )  # fmt: skip
    running = launch(repository, root / "server.log", {"IMGSERVE_TRITON_MODE": request.param})
    try:
        yield running
    finally:
        stop(running)


def boxes(answer, row: int) -> list[list[float]]:
    count = int(answer.as_numpy("count")[row, 0])
    assert (answer.as_numpy("classes")[row, count:] == -1).all()
    assert answer.as_numpy("boxes").shape[1:] == (MOST, 4)
    return sorted(answer.as_numpy("boxes")[row, :count].tolist())


@pytest.mark.parametrize("module", [httpclient, grpcclient])
def test_images_get_boxes_in_their_own_pixels(server: TritonProcess, module) -> None:
    cases = [canvas([(1, 0), (3, 1)]), canvas([]), canvas([(0, 1)])]
    client = module.InferenceServerClient(server.http if module is httpclient else server.grpc)
    item = module.InferInput("image", [len(cases), 1], "BYTES")
    item.set_data_from_numpy(np.array([c[0] for c in cases], dtype=np.object_).reshape(-1, 1))
    answer = client.infer("squares_fp32", [item])
    for row, (_, expected) in enumerate(cases):
        assert boxes(answer, row) == expected
    assert answer.as_numpy("scores")[0, :2].tolist() == [1.0, 1.0]
    assert answer.as_numpy("classes")[0, :2].tolist() == [0, 0]


def test_tensor_rows_get_boxes_in_the_input_pixels(server: TritonProcess) -> None:
    image, _ = canvas([(1, 0)])  # the input's cell (1, 1): pixels 8..16
    batch = decode_and_preprocess(image, SPEC)[np.newaxis]
    client = httpclient.InferenceServerClient(server.http)
    item = httpclient.InferInput("images", list(batch.shape), "FP32")
    item.set_data_from_numpy(batch)
    answer = client.infer("squares_fp32", [item])
    assert boxes(answer, 0) == [[8.0, 8.0, 16.0, 16.0]]


def test_a_bad_image_is_refused_with_a_message(server: TritonProcess) -> None:
    client = httpclient.InferenceServerClient(server.http)
    item = httpclient.InferInput("image", [1, 1], "BYTES")
    item.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_).reshape(-1, 1))
    with pytest.raises(InferenceServerException, match="image row 0"):
        client.infer("squares_fp32", [item])
