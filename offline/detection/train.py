"""Train the digit detector on generated canvases and export it to ONNX (dynamic batch).

Every step draws fresh canvases from the training digits (`canvases.draw`, seeded per step),
so the network never sees the same canvas twice and never a held-out digit. Positives are
the anchor points inside a digit's box and within `CENTRE_RADIUS` strides of its centre (and
always the one nearest it), as FCOS's and YOLOv8's centre priors choose them; an anchor
inside two boxes belongs to the smaller. Loss: binary cross-entropy of every class logit
against the positive's class (summed, over the positive count), plus GIoU and L1 loss of the
positives' boxes. One CPU thread, seeded: the same torch build reproduces the same weights.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias

from offline.detection.canvases import TRAIN_SEED, Canvases, draw
from offline.detection.network import (
    DEFAULT_WIDTHS,
    STRIDE,
    DigitDetector,
    Exported,
    anchor_points,
    to_corners,
)

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "output0"  # the name YOLOv8's ONNX export gives its output
CENTRE_RADIUS = 1.5  # strides from a digit's centre within which anchors are positives
BOX_WEIGHT = 2.5


def assign(
    canvases: Canvases, points: torch.Tensor, classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image and anchor: class targets (one-hot), box targets (x1 y1 x2 y2), positives."""
    count, anchors = len(canvases), len(points)
    class_target = torch.zeros(count, anchors, classes)
    box_target = torch.zeros(count, anchors, 4)
    positive = torch.zeros(count, anchors, dtype=torch.bool)
    for n, (boxes_np, labels) in enumerate(zip(canvases.boxes, canvases.classes, strict=True)):
        if not len(boxes_np):
            continue
        boxes = torch.from_numpy(boxes_np).float()
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = (
            (points[:, None, 0] > boxes[None, :, 0])
            & (points[:, None, 0] < boxes[None, :, 2])
            & (points[:, None, 1] > boxes[None, :, 1])
            & (points[:, None, 1] < boxes[None, :, 3])
        )
        near = (points[:, None, :] - centres[None]).abs().max(dim=2).values
        candidate = inside & (near < CENTRE_RADIUS * STRIDE)
        nearest = ((points[:, None, :] - centres[None]) ** 2).sum(2).argmin(dim=0)
        candidate[nearest, torch.arange(len(boxes))] = True
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        cost = torch.where(candidate, area[None].expand_as(candidate), torch.inf)
        best = cost.argmin(dim=1)
        chosen = candidate.any(dim=1)
        positive[n] = chosen
        box_target[n, chosen] = boxes[best[chosen]]
        class_target[n, chosen, torch.from_numpy(labels)[best[chosen]]] = 1.0
    return class_target, box_target, positive


def giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of paired x1 y1 x2 y2 boxes."""
    inter = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0).prod(1)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).prod(1)
    union = area_a + area_b - inter
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).prod(1)
    iou = inter / union.clamp(min=1e-6)
    return iou - (hull - union) / hull.clamp(min=1e-6)


def as_input(images: np.ndarray) -> torch.Tensor:
    """uint8 canvases (N, H, W) as the model's input: (N, 1, H, W), scaled to 0..1, as the
    served preprocessing (scale 1/255, mean 0, std 1) makes them."""
    return torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)


def train(
    digits: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int = 3000,
    batch_size: int = 32,
    size: tuple[int, int] = (96, 96),
    widths: tuple[int, int, int, int] = DEFAULT_WIDTHS,
    lr: float = 3e-3,
    on_step: Callable[[int, int, float], None] | None = None,
) -> DigitDetector:
    """A detector trained for `steps` steps of fresh canvases from `digits` (uint8 (N, 28, 28))."""
    torch.manual_seed(TRAIN_SEED)
    torch.set_num_threads(1)
    classes = int(labels.max()) + 1 if len(labels) else 10
    network = DigitDetector(classes=max(classes, 10), widths=widths)
    optimiser = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=lr, total_steps=steps, pct_start=0.15
    )
    points = anchor_points(*size)
    network.train()
    started = time.monotonic()
    running = math.nan
    for step in range(steps):
        batch = draw(digits, labels, batch_size, seed=TRAIN_SEED * 1000 + step, size=size)
        class_target, box_target, positive = assign(batch, points, network.classes)
        distances, logits = network(as_input(batch.images))
        positives = max(int(positive.sum()), 1)
        class_loss = (
            F.binary_cross_entropy_with_logits(logits, class_target, reduction="sum") / positives
        )
        predicted = to_corners(distances, points)[positive]
        target = box_target[positive]
        box_loss = (1 - giou(predicted, target)).mean() + F.l1_loss(
            predicted / STRIDE, target / STRIDE
        ) * 0.25
        loss = class_loss + BOX_WEIGHT * box_loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        value = float(loss.detach())
        running = value if math.isnan(running) else 0.98 * running + 0.02 * value
        if on_step is not None:
            on_step(step + 1, steps, running)
        if (step + 1) % 100 == 0:
            log.info(
                "step %d/%d loss %.3f (%.0f s)", step + 1, steps, running,
                time.monotonic() - started,
            )  # fmt: skip
    network.eval()
    return network


def export_onnx(network: DigitDetector, path: Path, size: tuple[int, int] = (96, 96)) -> Path:
    """ONNX with a dynamic batch axis: input `images` (batch, 1, H, W), output `output0`
    (batch, 4 + classes, anchors)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exported = Exported(network, *size).eval()
    sample = torch.zeros(1, 1, *size)
    torch.onnx.export(
        exported,
        (sample,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return path
