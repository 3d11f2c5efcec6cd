"""Named tensors: what engines, batchers and front ends pass between them.

A model's inputs and outputs are `Tensors`, a name -> array mapping with the batch axis
first. Batching concatenates requests along that axis and splits the outputs back along it;
a task whose outputs do not follow the batch axis supplies its own split
(`runners.tasks.base.Task.split`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from runners.errors import ModelLoadError

Tensors = dict[str, np.ndarray]


def batch_size(tensors: Mapping[str, np.ndarray]) -> int:
    """The batch size every tensor agrees on (0 for no tensors)."""
    sizes = {len(array) for array in tensors.values()}
    if len(sizes) > 1:
        raise ValueError(f"tensors disagree on the batch size: {sorted(sizes)}")
    return sizes.pop() if sizes else 0


def concat(parts: Sequence[Mapping[str, np.ndarray]]) -> Tensors:
    """Requests' tensors joined along the batch axis, name by name."""
    if len(parts) == 1:
        return dict(parts[0])
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def split_rows(
    outputs: Mapping[str, np.ndarray], counts: Sequence[int], source: str
) -> list[Tensors]:
    """Outputs split back per request along the batch axis, `counts[i]` rows for request i.

    The batching contract: every output has one row per input row, or every request in the
    batch would get someone else's answer; `source` names the model when it does not.
    """
    total = sum(counts)
    for name, array in outputs.items():
        if array.ndim == 0 or len(array) != total:
            rows = "a scalar" if array.ndim == 0 else f"{len(array)} rows"
            raise ModelLoadError(f"{source} returned {rows} of output {name!r} for {total} inputs")
    if len(counts) == 1:
        return [dict(outputs)]
    parts: list[Tensors] = []
    start = 0
    for count in counts:
        parts.append({name: array[start : start + count] for name, array in outputs.items()})
        start += count
    return parts


def take_rows(tensors: Mapping[str, np.ndarray], start: int, stop: int) -> Tensors:
    return {name: array[start:stop] for name, array in tensors.items()}


class RowSpec(Protocol):
    """A tensor's name and per-row dims (a repository TensorSpec is one)."""

    @property
    def name(self) -> str: ...

    @property
    def dims(self) -> tuple[int, ...]: ...


def pack(tensors: Mapping[str, np.ndarray], specs: Sequence[RowSpec]) -> np.ndarray:
    """Named tensors as one array with the batch axis first, for a transport that carries one
    (BentoML's batchable runner API): a single tensor as it is; several float32 tensors as
    their flattened rows side by side."""
    if len(specs) == 1:
        return tensors[specs[0].name]
    count = batch_size(tensors)
    parts = []
    for spec in specs:
        array = tensors[spec.name]
        if array.dtype != np.float32:
            raise TypeError(f"cannot pack {spec.name!r} of dtype {array.dtype}: float32 only")
        parts.append(array.reshape(count, -1))
    return np.concatenate(parts, axis=1)


def unpack(array: np.ndarray, specs: Sequence[RowSpec]) -> Tensors:
    """`pack`'s inverse, given the same specs."""
    if len(specs) == 1:
        return {specs[0].name: array}
    tensors: Tensors = {}
    start = 0
    for spec in specs:
        width = int(np.prod(spec.dims))
        tensors[spec.name] = array[:, start : start + width].reshape(len(array), *spec.dims)
        start += width
    return tensors
