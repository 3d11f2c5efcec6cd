"""A variant's loaded versions follow its directory; rows are routed by request and pin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runners import repository
from runners.model import LoadedModel
from runners.repository import ModelEntry, Rollout, read_model, write_model
from runners.versions import ANSWERED, NOT_LOADED, VersionSet, route_columns
from tests.models import tiny_classifier
from tests.unit.test_repository import make_entry


def load(entry: ModelEntry) -> LoadedModel:
    return LoadedModel.load(entry, backend="onnxruntime")


def rows(count: int, version: int | None, draw: float) -> dict[str, np.ndarray]:
    inputs = {"input": np.random.default_rng(1).random((count, 1, 8, 8), dtype=np.float32)}
    return {**inputs, **route_columns(count, version, draw)}


def published(tmp_path: Path) -> tuple[ModelEntry, Path, Path]:
    first = tiny_classifier(tmp_path / "v1.onnx", seed=1)
    second = tiny_classifier(tmp_path / "v2.onnx", seed=2)
    entry = write_model(make_entry(tmp_path / "repo"), first)
    return entry, first, second


def test_rows_go_to_the_champion_the_canary_or_the_pinned_version(tmp_path: Path) -> None:
    entry, first, second = published(tmp_path)
    versions = VersionSet(entry, load)
    assert versions.versions == (1,)
    assert (versions.run(rows(3, None, 0.5)).versions == 1).all()
    assert (versions.run(rows(2, 2, 0.5)).versions == NOT_LOADED).all()

    rollout = Rollout(challenger=2, canary_share=0.25, shadow_share=0.5)
    write_model(entry.model_copy(update={"rollout": rollout}), first, challenger_file=second)
    assert versions.refresh() and versions.versions == (1, 2)
    assert not versions.refresh(), "nothing changed since"
    canary = versions.run(rows(4, None, 0.1))
    assert (canary.versions == 2).all() and not canary.shadows
    expected = load(read_model(entry.directory).at_version(2)).run(
        rows(4, None, 0)["input"][None][0]
    )
    assert np.allclose(canary.outputs["logits"], expected["logits"])
    shadowed = versions.run(rows(4, None, 0.5))
    assert (shadowed.versions == 1).all()
    ((champion, challenger, agree, difference),) = shadowed.shadows
    assert (champion, challenger) == (1, 2) and len(agree) == len(difference) == 4
    # Each shadowed row's verdict: +2 where version 2 agreed, -2 where it did not.
    assert shadowed.verdicts().tolist() == [2 if a else -2 for a in agree]
    alone = versions.run(rows(4, None, 0.9))
    assert (alone.versions == 1).all() and not alone.shadows
    assert alone.verdicts().tolist() == [0, 0, 0, 0]
    pinned = versions.run(rows(2, 2, 0.9))
    assert (pinned.versions == 2).all()


def test_a_batch_of_mixed_requests_is_answered_row_by_row(tmp_path: Path) -> None:
    entry, first, second = published(tmp_path)
    write_model(
        entry.model_copy(update={"rollout": Rollout(challenger=2, canary_share=0.5)}),
        first,
        challenger_file=second,
    )
    versions = VersionSet(read_model(entry.directory), load)
    parts = [rows(2, None, 0.1), rows(3, None, 0.9), rows(1, 7, 0.9)]
    batch = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    routed = versions.run(batch)
    assert routed.versions.tolist() == [2, 2, 1, 1, 1, NOT_LOADED]
    alone = {v: load(read_model(entry.directory).at_version(v)) for v in (1, 2)}
    assert np.allclose(routed.outputs["logits"][:2], alone[2].run(parts[0]["input"])["logits"])
    assert np.allclose(routed.outputs["logits"][2:5], alone[1].run(parts[1]["input"])["logits"])
    assert ANSWERED not in routed.outputs


def test_a_version_that_fails_to_load_leaves_the_state_as_it_was(tmp_path: Path) -> None:
    entry, first, _ = published(tmp_path)
    versions = VersionSet(entry, load)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    write_model(
        entry.model_copy(update={"rollout": Rollout(challenger=2, canary_share=1.0)}),
        first,
        challenger_file=broken,
    )
    assert not versions.refresh()
    assert versions.versions == (1,) and versions.last_error
    assert (versions.run(rows(2, None, 0.1)).versions == 1).all()


def test_a_read_that_spans_a_promotion_sees_one_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A promotion swaps the directory between a reader's config and its version folders: the
    reader starts over on the new directory instead of pairing the old config (versions 1 and
    2) with the new folders (version 2 alone)."""
    entry, first, second = published(tmp_path)
    rollout = Rollout(challenger=2, canary_share=0.5)
    write_model(entry.model_copy(update={"rollout": rollout}), first, challenger_file=second)
    read_text = Path.read_text
    swaps: list[Path] = []

    def read_then_promote(path: Path, *args: Any, **kwargs: Any) -> str:
        text = read_text(path, *args, **kwargs)
        if not swaps and path == entry.directory / repository.CONFIG_FILE:
            swaps.append(path)
            write_model(entry.model_copy(update={"version": 2}), second)
        return text

    monkeypatch.setattr(Path, "read_text", read_then_promote)
    read = read_model(entry.directory)
    assert swaps, "the promotion ran inside the read"
    assert (read.version, read.versions, read.rollout) == (2, (2,), None)
