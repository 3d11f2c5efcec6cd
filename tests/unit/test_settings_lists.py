"""List settings take the comma form users type as well as JSON."""

from __future__ import annotations

import pytest

from monitoring.settings import PredictionLogSettings
from serving.settings import ServingSettings


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("textorient,digits", ("textorient", "digits")),
        (" textorient , digits ", ("textorient", "digits")),
        ("digits", ("digits",)),
        ('["textorient", "digits"]', ("textorient", "digits")),
    ],
)
def test_models_accept_commas_and_json(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: tuple[str, ...]
) -> None:
    monkeypatch.setenv("IMGSERVE_MODELS", value)
    assert ServingSettings().models == expected


def test_a_numeric_pair_takes_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGSERVE_REVIEW_BAND", "0.2,0.8")
    assert PredictionLogSettings().review_band == (0.2, 0.8)
