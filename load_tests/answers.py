"""What a well-formed answer of a task's route looks like, for the Locust users' checks.

Kept apart from the locustfile (which imports Locust, and with it gevent's monkey patching)
so that the checks are plain functions a unit test imports.
"""

from __future__ import annotations

from typing import Any

BOX_FIELDS = frozenset({"label", "index", "score", "box"})


def detection_problem(answer: Any, width: int, height: int) -> str | None:
    """What is wrong with a `/v1/detect` answer for an image of `width` x `height` pixels, or
    None: a `detections` list of label, class index, score in [0, 1] and an x1 y1 x2 y2 box
    inside the image (the task clips boxes to the image it answers)."""
    if not isinstance(answer, dict) or not isinstance(answer.get("detections"), list):
        return "no detections list in the answer"
    for n, found in enumerate(answer["detections"]):
        if not isinstance(found, dict) or set(found) != BOX_FIELDS:
            return f"detection {n} is not label, index, score and box"
        label, index, score, box = (found[k] for k in ("label", "index", "score", "box"))
        if not isinstance(label, str) or not label:
            return f"detection {n} has no label"
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            return f"detection {n} has no class index"
        if not _number(score) or not 0 <= score <= 1:
            return f"detection {n}'s score is not in [0, 1]"
        if not isinstance(box, list) or len(box) != 4 or not all(_number(v) for v in box):
            return f"detection {n}'s box is not four numbers"
        x1, y1, x2, y2 = box
        if not (0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height):
            return f"detection {n}'s box {box} is not inside the {width}x{height} image"
    return None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
