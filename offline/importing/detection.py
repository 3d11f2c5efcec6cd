"""`offline import --task detection`: bring your own YOLOv8/YOLO11-style ONNX detector.

    python -m offline import yolo.onnx --task detection --name parts --labels names.txt \\
        --calibration calib/ [--validation val/] [--score-threshold 0.25] \\
        [--iou-threshold 0.45] [--max-detections 100] [--pad-value 114 ...]

The file must be what Ultralytics exports with `format="onnx", dynamic=True`: one float32
image input `[batch, C, H, W]` (or NHWC) with a dynamic batch axis, and one float32 output
`[batch, 4 + classes, anchors]` (box centre, width and height in input pixels, then class
scores). Its preprocessing is a letterbox (Ultralytics pads with grey 114 and scales by
1/255: the defaults here unless flags say otherwise). Validation images carry no boxes, so
INT8 (and BF16) are judged against FP32's own boxes (`offline.detection.publish`). Every
check runs before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx

from offline.detection.card import DetectorCard
from offline.detection.publish import MAX_DROP_POINTS, DetectorRelease, publish_detector
from offline.importing.images import files_under, folder, read_labels
from offline.importing.pipeline import check_name
from offline.importing.signature import Signature, declared_dims, show
from offline.importing.spec import resolve_spec
from offline.quantize import QUANTIZERS
from runners.errors import ModelImportError
from runners.repository import Batching
from runners.tasks.detection import DetectionParameters

# Ultralytics' letterbox: grey padding, pixels scaled to 0..1.
DEFAULT_SPEC: dict[str, Any] = {"resize": "letterbox", "pad_value": 114, "scale": 1 / 255}
HOLD_OUT_EVERY = 5  # without --validation, every fifth calibration image judges instead


def detector_signature(path: Path) -> Signature:
    """The graph's image input and box output; refuse anything else with what it is."""
    if not path.is_file():
        raise ModelImportError(f"model file {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelImportError(f"{path} is not a valid ONNX model: {exc}") from exc
    graph = model.graph
    initialisers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ModelImportError(
            f"{path} has {len(inputs)} inputs and {len(graph.output)} outputs; a detector here "
            "takes one image tensor and returns one [batch, 4 + classes, anchors] tensor"
        )
    image, boxes = inputs[0], graph.output[0]
    input_dims, output_dims = declared_dims(image), declared_dims(boxes)
    if input_dims is None or len(input_dims) != 4:
        raise ModelImportError(
            f"{path}: input {image.name!r} has shape {show(input_dims)}; a detector takes a "
            "4-D [batch, C, H, W] or [batch, H, W, C] tensor"
        )
    if input_dims[0] is not None:
        raise ModelImportError(
            f"{path}: input {image.name!r} has a fixed batch of {input_dims[0]}; export it "
            "with a dynamic batch axis (Ultralytics: dynamic=True)"
        )
    if output_dims is None or len(output_dims) != 3 or None in output_dims[1:]:
        raise ModelImportError(
            f"{path}: output {boxes.name!r} has shape {show(output_dims)}; a detector here "
            "returns [batch, 4 + classes, anchors] with static classes and anchors (YOLOv8's "
            "export)"
        )
    for role, tensor in (("input", image), ("output", boxes)):
        if tensor.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ModelImportError(f"{path}: {role} {tensor.name!r} is not float32")
    return Signature(image.name, input_dims, boxes.name, output_dims)


def import_detector(
    model: Path,
    name: str,
    *,
    labels: Path,
    calibration: Path,
    spec_fields: Mapping[str, Any],
    spec_source: str,
    repository: Path,
    batching: Batching,
    parameters: DetectionParameters,
    validation: Path | None = None,
    quantizers: tuple[str, ...] = tuple(QUANTIZERS),
    max_drop_points: float = MAX_DROP_POINTS,
    measure_duration_s: float = 1.0,
    summary: str | None = None,
) -> DetectorCard:
    """Check the file, labels, preprocessing and images, then publish `<name>_fp32` and (through
    the gate) `<name>_int8` as detectors."""
    check_name(name)
    signature = detector_signature(model)
    names = read_labels(labels)
    output_dims = signature.output_dims
    assert output_dims is not None  # detector_signature refuses an unknown rank
    if output_dims[1] != 4 + len(names):
        raise ModelImportError(
            f"{labels} has {len(names)} labels, but output {signature.output_name!r} of "
            f"{model} is {show(output_dims)}: 4 box values and {(output_dims[1] or 0) - 4} classes"
        )
    spec = resolve_spec({**DEFAULT_SPEC, **spec_fields}, signature, model, spec_source)
    if spec.resize != "letterbox":
        raise ModelImportError(
            f"a detector's preprocessing resizes by letterbox, not {spec.resize} (its boxes "
            "map back to the image through it)"
        )
    images = files_under(folder(calibration, "calibration"))
    if validation is None:
        held = images[::HOLD_OUT_EVERY]
        images = [path for i, path in enumerate(images) if i % HOLD_OUT_EVERY]
        judged = f"every {HOLD_OUT_EVERY}th calibration image ({len(held)}), held out"
    else:
        held = files_under(folder(validation, "validation"))
        judged = f"{len(held)} images of {validation}"
    if not images or not held:
        raise ModelImportError(
            f"{calibration} needs images both to calibrate INT8 and to judge it (at least "
            f"{HOLD_OUT_EVERY} without --validation)"
        )
    release = DetectorRelease(
        family=name,
        fp32_onnx=model,
        spec=spec,
        labels=names,
        input_name=signature.input_name,
        output_name=signature.output_name,
        anchors=int(output_dims[2] or 0),
        batching=batching,
        validation=[path.read_bytes() for path in held],
        validation_description=(
            f"{judged}, sent through the serving preprocessing; no labelled boxes: each "
            "variant's mAP@0.5 against FP32's own boxes at the served score threshold"
        ),
        calibration=[path.read_bytes() for path in images],
        calibration_description=f"{len(images)} images of {calibration}",
        summary=summary or f"{name}: an imported YOLOv8-style detector ({len(names)} classes).",
        how=f"imported from {model.name} (offline.importing.detection)",
        reproduce=f"python -m offline import {model.name} --task detection --name {name} ...",
        parameters=parameters,
        quantizers=quantizers,
        measure_duration_s=measure_duration_s,
        max_drop_points=max_drop_points,
    )
    return publish_detector(release, repository)
