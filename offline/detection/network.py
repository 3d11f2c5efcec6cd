"""A small single-stage, anchor-free detector with YOLOv8's head format.

A plain strided CNN down to one feature map at stride 8; each cell of it is an anchor point
that predicts the distances from its centre to the four sides of a box (left, top, right,
bottom, through a softplus, in strides) and one logit per class, as YOLOv8's decoupled head
does without its distribution focal loss. The exported graph decodes them to YOLOv8's output,
`[batch, 4 + classes, anchors]`: box centre, width and height in input pixels, then the class
probabilities; so the served model is what a YOLOv8 export is, and the serving task
(`runners.tasks.detection`) serves either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn

STRIDE = 8
DEFAULT_WIDTHS = (16, 32, 48, 64)  # channels at strides 1, 2, 4 and 8
BN_EPS = 1e-5


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out, eps=BN_EPS),
        nn.ReLU(inplace=True),
    )


class DigitDetector(nn.Module):
    """`widths`: channels at strides 1, 2, 4 and 8 (the default: about 50 M multiply-adds
    per 96x96 image); a tiny one trains in seconds for tests."""

    def __init__(self, classes: int = 10, widths: tuple[int, int, int, int] = DEFAULT_WIDTHS):
        super().__init__()
        w1, w2, w4, w8 = widths
        self.classes = classes
        self.features = nn.Sequential(
            _block(1, w1),
            _block(w1, w2, 2),
            _block(w2, w4, 2),
            _block(w4, w4),
            _block(w4, w8, 2),
            _block(w8, w8),
            _block(w8, w8),
        )
        self.box_head = nn.Conv2d(w8, 4, 1)
        block, scores = _block(w8, w8), nn.Conv2d(w8, classes, 1)
        # Start from a low class probability (RetinaNet's prior) so that the background,
        # which most anchors see, does not dominate the first steps.
        assert scores.bias is not None
        nn.init.constant_(scores.bias, -4.6)
        self.class_head = nn.Sequential(block, scores)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw outputs: side distances (batch, anchors, 4) in strides, class logits
        (batch, anchors, classes)."""
        features = self.features(x)
        distances = F.softplus(self.box_head(features)).flatten(2).transpose(1, 2)
        logits = self.class_head(features).flatten(2).transpose(1, 2)
        return distances, logits


def anchor_points(height: int, width: int) -> torch.Tensor:
    """Each cell's centre in input pixels, (anchors, 2) as x, y, row by row."""
    ys = (torch.arange(height // STRIDE, dtype=torch.float32) + 0.5) * STRIDE
    xs = (torch.arange(width // STRIDE, dtype=torch.float32) + 0.5) * STRIDE
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)


def to_corners(distances: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Side distances in strides -> x1 y1 x2 y2 in pixels."""
    scaled = distances * STRIDE
    return torch.cat([points - scaled[..., :2], points + scaled[..., 2:]], dim=-1)


class Exported(nn.Module):
    """The network with YOLOv8's decoded output, for ONNX export."""

    def __init__(self, network: DigitDetector, height: int, width: int) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("points", anchor_points(height, width))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        distances, logits = self.network(images)
        points = self.get_buffer("points")
        corners = to_corners(distances, points)
        centre = (corners[..., :2] + corners[..., 2:]) / 2
        size = corners[..., 2:] - corners[..., :2]
        return torch.cat([centre, size, torch.sigmoid(logits)], dim=-1).transpose(1, 2)
