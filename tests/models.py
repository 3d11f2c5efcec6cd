"""Tiny real ONNX classifiers built in a temporary folder for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_classifier(
    path: Path, channels: int = 1, size: int = 8, classes: int = 3, seed: int = 0
) -> Path:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm, dynamic batch, float32."""
    rng = np.random.default_rng(seed)
    weights = {
        "conv_w": rng.standard_normal((4, channels, 3, 3)).astype(np.float32),
        "conv_b": rng.standard_normal(4).astype(np.float32) * 0.1,
        "fc_w": rng.standard_normal((classes, 4)).astype(np.float32),
        "fc_b": rng.standard_normal(classes).astype(np.float32) * 0.1,
    }
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, ["batch", channels, size, size]
            )
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def two_headed(path: Path) -> Path:
    """Two inputs (image, bias: [batch, 3]) and two outputs (sum = image + bias, double =
    image * 2): a graph whose tensors only make sense by name."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["image", "bias"], ["sum"]),
            helper.make_node("Add", ["image", "image"], ["double"]),
        ],
        "two_headed",
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["batch", 3]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("double", TensorProto.FLOAT, ["batch", 3]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def tiny_detector(path: Path, size: int = 32, classes: int = 3, cell: int = 8) -> Path:
    """A YOLOv8-format detector of bright squares, built by hand: one anchor per `cell`-pixel
    cell of a grayscale `size` x `size` input, whose box is the cell itself and whose class-0
    score is the cell's mean (1 for a white cell, with inputs scaled to 0..1); the other
    classes score 0. Output `[batch, 4 + classes, anchors]`, dynamic batch, float32. A white
    square covering exactly one cell is found exactly where it is."""
    grid = size // cell
    anchors = grid * grid
    centres = (np.arange(grid, dtype=np.float32) + 0.5) * cell
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    cells = np.stack(
        [cx.reshape(-1), cy.reshape(-1), np.full(anchors, cell), np.full(anchors, cell)]
    ).astype(np.float32)[np.newaxis]
    weights = {
        "mean_w": np.full((1, 1, cell, cell), 1 / cell**2, np.float32),
        "shape": np.array([0, 1, anchors], np.int64),
        "cells": cells,
        "zero_boxes": np.zeros((1, 4, 1), np.float32),
        "zero_classes": np.zeros((1, classes - 1, 1), np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["images", "mean_w"], ["m"], strides=[cell, cell]),
        helper.make_node("Reshape", ["m", "shape"], ["score"]),
        helper.make_node("Mul", ["score", "zero_boxes"], ["zb"]),
        helper.make_node("Add", ["zb", "cells"], ["boxes"]),
        helper.make_node("Mul", ["score", "zero_classes"], ["others"]),
        helper.make_node("Concat", ["boxes", "score", "others"], ["output0"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, size, size])],
        [
            helper.make_tensor_value_info(
                "output0", TensorProto.FLOAT, ["batch", 4 + classes, anchors]
            )
        ],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
