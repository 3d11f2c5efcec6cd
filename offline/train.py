"""Train the default digit classifier and export it to ONNX with a dynamic batch axis.

Run: `.venv/bin/python -m offline.train --out model_repository/digits_fp32/1/model.onnx`
(needs the `train` and `build` extras: `pip install -e '.[train,build]'`). Seeded: the same
torch build on the same CPU reproduces the same weights; the committed model's card records
the accuracy it reached.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn

from offline.data import DigitSplits, load_splits

log = logging.getLogger(__name__)

TRAIN_SEED = 7
MEAN = 0.1307
STD = 0.3081
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# Peak learning rate when fine-tuning a trained model: a tenth of training's from scratch,
# enough to learn new inputs in a few epochs without forgetting the old ones.
FINE_TUNE_LR = 3e-4
BN_EPS = 1e-5  # nn.BatchNorm2d's default


class DigitNet(nn.Module):
    """A small CNN: ~2.3 M multiply-adds per 28x28 image, so serving cost is dominated by
    the front end rather than the model, which is what a serving benchmark should expose."""

    def __init__(self) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(
            block(1, 16), nn.MaxPool2d(2), block(16, 32), nn.MaxPool2d(2), block(32, 64)
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(64 * 7 * 7, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.3),
            nn.Linear(128, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _normalise(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return (x - MEAN) / STD


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random small affine warps (rotation, scale, shift): 4,000 digits are few, and
    handwriting varies mostly in slant, size and position."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) - 0.5) * math.radians(24)
    scale = 1 + (torch.rand(n, generator=generator) - 0.5) * 0.2
    shift = (torch.rand(n, 2, generator=generator) - 0.5) * 0.2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    background = (0 - MEAN) / STD
    warped = F.grid_sample(x - background, grid, align_corners=False, padding_mode="zeros")
    return warped + background


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        predicted = model(_normalise(images)).argmax(1).numpy()
    return float((predicted == labels).mean())


def train(
    splits: DigitSplits,
    epochs: int = 30,
    batch_size: int = 64,
    *,
    initial: DigitNet | None = None,
    on_epoch: Callable[[int, int, float], None] | None = None,
) -> nn.Module:
    """Train on `splits.train_images`. From `initial` (a served model's weights, `from_onnx`)
    it fine-tunes: a lower peak learning rate, and the normalisation layers kept as they are
    (their statistics come from the data the initial model learnt), so it starts exactly
    where that model is. `on_epoch(done, epochs, loss)` follows the progress."""
    torch.manual_seed(TRAIN_SEED)
    generator = torch.Generator().manual_seed(TRAIN_SEED)
    model = initial if initial is not None else DigitNet()
    peak_lr = FINE_TUNE_LR if initial is not None else 3e-3
    x_all = _normalise(splits.train_images)
    y_all = torch.from_numpy(splits.train_labels)
    steps = epochs * math.ceil(len(x_all) / batch_size)
    optimiser = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=peak_lr, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        if initial is not None:
            _freeze_normalisation(model)
        order = torch.randperm(len(x_all), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(
                model(_augment(x_all[index], generator)), y_all[index], label_smoothing=0.05
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        log.info("epoch %d/%d loss %.4f", epoch + 1, epochs, loss.item())
        if on_epoch is not None:
            on_epoch(epoch + 1, epochs, float(loss.item()))
    model.eval()
    return model


def _freeze_normalisation(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
            for parameter in module.parameters():
                parameter.requires_grad_(False)


def from_onnx(path: Path) -> DigitNet:
    """A DigitNet holding the weights of an exported one (`export_onnx`).

    The export folds each BatchNorm into the convolution before it; here the folded weights
    go back into the convolutions, the folded bias into the BatchNorm's shift, and its scale
    and statistics are the identity, so the network computes what the file computes.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    weights = {item.name: numpy_helper.to_array(item) for item in graph.initializer}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    model = DigitNet()
    blocks = [m for m in model.features if isinstance(m, nn.Sequential)]
    if len(convs) != len(blocks) or any(len(node.input) != 3 for node in convs):
        raise ValueError(f"{path} is not an exported DigitNet (its convolutions differ)")
    state = model.state_dict()
    for index, node in zip((0, 2, 4), convs, strict=True):
        state[f"features.{index}.0.weight"] = torch.from_numpy(weights[node.input[1]].copy())
        bias = torch.from_numpy(weights[node.input[2]].copy())
        state[f"features.{index}.1.weight"] = torch.ones_like(bias)
        state[f"features.{index}.1.bias"] = bias
        state[f"features.{index}.1.running_mean"] = torch.zeros_like(bias)
        state[f"features.{index}.1.running_var"] = torch.ones_like(bias) - BN_EPS
    for name in ("head.2.weight", "head.2.bias", "head.5.weight", "head.5.bias"):
        if name not in weights or tuple(weights[name].shape) != tuple(state[name].shape):
            raise ValueError(f"{path} is not an exported DigitNet (no {name} of its shape)")
        state[name] = torch.from_numpy(weights[name].copy())
    model.load_state_dict(state)
    model.eval()
    return model


def export_onnx(model: nn.Module, path: Path) -> None:
    """Export with a dynamic batch axis so Triton and the batchers can stack requests."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 28, 28),),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write model.onnx")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    splits = load_splits()
    model = train(splits, epochs=args.epochs)
    log.info("held-out top-1: %.4f", accuracy(model, splits.test_images, splits.test_labels))
    export_onnx(model, args.out)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
