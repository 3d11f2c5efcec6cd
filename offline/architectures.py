"""ImageNet-shaped ONNX graphs with seeded random weights: load profiles, not classifiers.

torch is not available where models are built, so the graphs are written node by node with
`onnx.helper`. BatchNorm is already folded (every Conv carries a bias), as an
inference-optimised export would have it, so the served graph costs what the real one costs.

Weights are He-normal (std = sqrt(2 / fan_in)) so activations keep their scale through 50
layers, and the last conv of every residual branch is scaled down so that the residual
stream stays bounded. The classifier is fitted to the random body (see
`_Graph._input_sensitive_head`) so that different inputs get different argmax classes,
which the INT8/FP32 agreement check needs. The logits mean nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# IR 8 is what opset 17 was released with; newer IR versions are rejected by older
# onnxruntime builds (including Triton's), and nothing here needs them.
IR_VERSION = 8
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
NUM_CLASSES = 1000
IMAGE_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Images per input kind used to measure the pooled-feature means the head is fitted to.
HEAD_PROBE_SAMPLES = 8
# Scale on the last conv of a residual branch: each block then adds a small increment to
# the stream instead of doubling its variance, so 16 stacked blocks stay well inside float
# range and ReLU6's clip.
RESIDUAL_SCALE = 0.2
BIAS_STD = 0.01

MOBILENET_V2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    # (expansion t, output channels c, repeats n, first stride s), from the paper's Table 2.
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
RESNET50_STAGES: tuple[tuple[int, int], ...] = ((3, 64), (4, 128), (6, 256), (3, 512))
RESNET_EXPANSION = 4


def _image_input() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(
        INPUT_NAME, TensorProto.FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE]
    )


def _probe_inputs(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` iid N(0, 1) images and `count` smooth ones, the two kinds fed to profiles.

    The smooth ones imitate what `offline.profiles` sends through the serving preprocessing:
    8x8 uniform noise upsampled (bilinear here) and ImageNet-normalised.
    """
    noise = rng.standard_normal((count, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    coarse = rng.uniform(0.0, 1.0, size=(count, 3, 8, 8))
    # Linear interpolation matrix from 8 samples onto the image's pixel centres.
    positions = (np.arange(IMAGE_SIZE) + 0.5) * 8 / IMAGE_SIZE - 0.5
    upsample = np.maximum(0.0, 1.0 - np.abs(positions[:, None] - np.arange(8)[None, :]))
    upsample /= upsample.sum(axis=1, keepdims=True)
    smooth = upsample @ coarse @ upsample.T
    mean = np.array(IMAGENET_MEAN)[None, :, None, None]
    std = np.array(IMAGENET_STD)[None, :, None, None]
    return noise, ((smooth - mean) / std).astype(np.float32)


class _Graph:
    """Collects nodes and initialisers; every tensor is named after the node that makes it."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._has_relu6_bounds = False

    def _constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv(
        self,
        name: str,
        x: str,
        channels: tuple[int, int],
        kernel: int,
        *,
        stride: int = 1,
        groups: int = 1,
        scale: float = 1.0,
    ) -> str:
        """Conv (`channels` = in, out) with a folded-BatchNorm bias; `scale` shrinks weights."""
        in_channels, out_channels = channels
        fan_in = in_channels // groups * kernel * kernel
        std = scale * np.sqrt(2.0 / fan_in)
        shape = (out_channels, in_channels // groups, kernel, kernel)
        weight = self._rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        bias = self._rng.standard_normal(out_channels, dtype=np.float32) * np.float32(BIAS_STD)
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, self._constant(f"{name}.weight", weight), self._constant(f"{name}.bias", bias)],
                [name],
                name=name,
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[kernel // 2] * 4,
                group=groups,
            )
        )
        return name

    def op(self, op_type: str, name: str, inputs: list[str], **attributes: Any) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attributes))
        return name

    def relu6(self, name: str, x: str) -> str:
        # One shared pair of bounds, added on first use so graphs without Clip carry none.
        if not self._has_relu6_bounds:
            self._constant("relu6.min", np.array(0.0))
            self._constant("relu6.max", np.array(6.0))
            self._has_relu6_bounds = True
        return self.op("Clip", name, [x, "relu6.min", "relu6.max"])

    def head(self, x: str, channels: int) -> str:
        """GlobalAveragePool, Flatten and a Gemm to the class logits, fitted as below."""
        pooled = self.op("GlobalAveragePool", "head.pool", [x])
        flat = self.op("Flatten", "head.flatten", [pooled], axis=1)
        weight = self._input_sensitive_head(flat, channels)
        bias = self._rng.standard_normal(NUM_CLASSES, dtype=np.float32) * np.float32(BIAS_STD)
        inputs = [flat, self._constant("head.fc.weight", weight)]
        inputs.append(self._constant("head.fc.bias", bias))
        self.nodes.append(helper.make_node("Gemm", inputs, [OUTPUT_NAME], name="head.fc", transB=1))
        return OUTPUT_NAME

    def _input_sensitive_head(self, features: str, channels: int) -> np.ndarray:
        """Classifier weights that see how features vary between inputs, not their mean.

        Pooled post-ReLU features of a random network are a large input-independent mean
        plus a small input-dependent part; a plain random Gemm turns the mean into the same
        argmax for every input. The mean moves with the input distribution (iid noise and
        smooth images differ), so rather than subtract one bias the weights are projected
        off the span of both means, measured with onnxruntime on a few seeded inputs, and
        scaled so the logits spread about one unit.
        """
        import onnxruntime as ort

        body = helper.make_model(
            helper.make_graph(
                self.nodes,
                "body",
                [_image_input()],
                [helper.make_tensor_value_info(features, TensorProto.FLOAT, ["batch", channels])],
                self.initializers,
            ),
            opset_imports=[helper.make_opsetid("", OPSET)],
        )
        body.ir_version = IR_VERSION
        session = ort.InferenceSession(body.SerializeToString(), providers=["CPUExecutionProvider"])
        samples = [
            session.run(None, {INPUT_NAME: batch})[0]
            for batch in _probe_inputs(self._rng, HEAD_PROBE_SAMPLES)
        ]
        basis, _ = np.linalg.qr(np.stack([s.mean(axis=0) for s in samples], axis=1))
        weight = self._rng.standard_normal((NUM_CLASSES, channels)).astype(np.float32)
        weight -= (weight @ basis) @ basis.T
        deviations = np.concatenate([s - s.mean(axis=0) for s in samples])
        spread = float((deviations @ weight.T).std())
        return (weight / spread).astype(np.float32)

    def model(self, architecture: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            architecture,
            [_image_input()],
            [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", NUM_CLASSES])],
            self.initializers,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="offline.architectures",
            doc_string=(
                f"LOAD PROFILE, NOT A CLASSIFIER: {architecture} topology with seeded random "
                "He-normal weights (BatchNorm folded into conv biases). Predictions mean nothing."
            ),
        )
        model.ir_version = IR_VERSION
        helper.set_model_props(model, {"profile": "load", "architecture": architecture})
        onnx.checker.check_model(model)
        return model


def build_mobilenet_v2(seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2, width 1.0: 17 inverted-residual blocks, 1280-channel head, 1000 logits."""
    g = _Graph(seed)
    x = g.relu6("stem.relu", g.conv("stem.conv", INPUT_NAME, (3, 32), 3, stride=2))
    channels = 32
    for stage, (expansion, out_channels, repeats, first_stride) in enumerate(
        MOBILENET_V2_SETTINGS, start=1
    ):
        for index in range(repeats):
            prefix = f"stage{stage}.block{index}"
            stride = first_stride if index == 0 else 1
            residual = stride == 1 and channels == out_channels
            hidden = channels * expansion
            y = x
            if expansion != 1:
                y = g.relu6(f"{prefix}.relu1", g.conv(f"{prefix}.expand", y, (channels, hidden), 1))
            y = g.conv(f"{prefix}.depthwise", y, (hidden, hidden), 3, stride=stride, groups=hidden)
            y = g.relu6(f"{prefix}.relu2", y)
            scale = RESIDUAL_SCALE if residual else 1.0
            y = g.conv(f"{prefix}.project", y, (hidden, out_channels), 1, scale=scale)
            x = g.op("Add", f"{prefix}.add", [x, y]) if residual else y
            channels = out_channels
    x = g.relu6("head.relu", g.conv("head.conv", x, (channels, 1280), 1))
    g.head(x, 1280)
    return g.model("mobilenet_v2")


def build_resnet50(seed: int = 0) -> onnx.ModelProto:
    """ResNet-50 v1.5 (stride on the 3x3 conv): bottleneck stages [3, 4, 6, 3], 1000 logits."""
    g = _Graph(seed)
    x = g.op("Relu", "stem.relu", [g.conv("stem.conv", INPUT_NAME, (3, 64), 7, stride=2)])
    x = g.op("MaxPool", "stem.pool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    channels = 64
    for stage, (blocks, width) in enumerate(RESNET50_STAGES, start=1):
        out_channels = width * RESNET_EXPANSION
        for index in range(blocks):
            prefix = f"stage{stage}.block{index}"
            # Stage 1 keeps the resolution because the stem's max-pool already halved it.
            stride = 2 if index == 0 and stage > 1 else 1
            y = g.op(
                "Relu", f"{prefix}.relu1", [g.conv(f"{prefix}.conv1", x, (channels, width), 1)]
            )
            y = g.conv(f"{prefix}.conv2", y, (width, width), 3, stride=stride)
            y = g.op("Relu", f"{prefix}.relu2", [y])
            y = g.conv(f"{prefix}.conv3", y, (width, out_channels), 1, scale=RESIDUAL_SCALE)
            shortcut = x
            if index == 0:
                shortcut = g.conv(
                    f"{prefix}.downsample", x, (channels, out_channels), 1, stride=stride
                )
            x = g.op("Relu", f"{prefix}.relu3", [g.op("Add", f"{prefix}.add", [shortcut, y])])
            channels = out_channels
    g.head(x, channels)
    return g.model("resnet50")


def parameter_count(model: onnx.ModelProto) -> int:
    """Number of weights and biases in the graph's initialisers (constants included)."""
    return sum(int(np.prod(init.dims)) for init in model.graph.initializer)


def save(model: onnx.ModelProto, path: Path | str) -> Path:
    """Write the model as one file: ResNet-50 is ~100 MB, far under protobuf's 2 GB limit."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(target))
    return target


ARCHITECTURES: dict[str, Callable[[int], onnx.ModelProto]] = {
    "mobilenet_v2": build_mobilenet_v2,
    "resnet50": build_resnet50,
}
