"""What a well-formed answer of a task's route looks like, for the Locust users' checks.

Kept apart from the locustfile (which imports Locust, and with it gevent's monkey patching)
so that the checks are plain functions a unit test imports.
"""

from __future__ import annotations

from typing import Any

import numpy as np

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


# The outputs of a detector's Triton form (`runners.tasks.detection`), padded per image.
TRITON_DETECTION_OUTPUTS = ("count", "boxes", "scores", "classes")


def triton_detection_problem(outputs: dict[str, Any], width: int, height: int) -> str | None:
    """What is wrong with one image's Triton detection outputs (`count`; `boxes`, `scores`
    and `classes` padded to the model's most detections), or None: every real row a box
    inside the image, a score in [0, 1] and a class index; the padding zeros with class -1."""
    missing = [name for name in TRITON_DETECTION_OUTPUTS if name not in outputs]
    if missing:
        return f"no {', '.join(missing)} output in the answer"
    try:
        count = int(_flat(outputs["count"])[0])
        scores = [float(v) for v in _flat(outputs["scores"])]
        classes = [int(v) for v in _flat(outputs["classes"])]
        coordinates = [float(v) for v in _flat(outputs["boxes"])]
    except (IndexError, TypeError, ValueError):
        return "the detection outputs are not numbers"
    most = len(scores)
    if len(classes) != most or len(coordinates) != 4 * most:
        return f"boxes, scores and classes disagree on the rows ({len(coordinates)}, {most})"
    if not 0 <= count <= most:
        return f"count {count} is not between 0 and the {most} rows"
    for n in range(count):
        x1, y1, x2, y2 = coordinates[4 * n : 4 * n + 4]
        if not 0 <= scores[n] <= 1:
            return f"detection {n}'s score is not in [0, 1]"
        if classes[n] < 0:
            return f"detection {n} has no class index"
        if not (0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height):
            return f"detection {n}'s box is not inside the {width}x{height} image"
    padding = any(scores[count:]) or any(coordinates[4 * count :])
    if padding or any(index != -1 for index in classes[count:]):
        return f"the rows after the {count} real ones are not padding (zeros, class -1)"
    return None


def _flat(value: Any) -> list[Any]:
    """An array, or the nested lists of a JSON answer, as one flat list."""
    return list(np.asarray(value).reshape(-1).tolist())
