"""The `import` command line: check a user's ONNX image classifier, then publish it like ours.

    python -m offline import model.onnx --name flowers --labels labels.txt \\
        --calibration calib/ [--validation val/] [--spec spec.json] [--height 224 ...] \\
        [--reference ref_images/ reference.npz]

Every check runs before anything is written: the file is ONNX and an image classifier
(one 4-D float32 input, one 2-D [batch, classes] output), the preprocessing spec matches
the input's dims, the labels match the classes, and every image decodes. A graph that pins
batch 1 is made dynamic when that provably gives the same rows, else served unbatched.
With --reference, the served FP32 file must agree with the model's original pipeline on
the reference images (--min-parity). Then `offline.publish` quantizes, gates, measures and
writes both variants. Every failure ends in one line; --debug adds the traceback.
`--task detection` imports a YOLOv8-style detector instead (`offline.importing.detection`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from offline.detection.publish import MAX_DROP_POINTS
from offline.gate import GateThresholds
from offline.importing.parity import DEFAULT_MIN_PARITY
from offline.importing.pipeline import DEFAULT_BATCHING, DEFAULT_REPOSITORY, import_model
from offline.importing.spec import SPEC_FLAGS, load_spec_fields
from offline.quantize import QUANTIZERS, failure_reason
from runners.errors import ModelImportError, ServingError
from runners.repository import Batching
from runners.tasks.detection import DetectionParameters

log = logging.getLogger(__name__)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(_number(part) for part in text.split(",") if part.strip())


def _number(text: str) -> float:
    """A float or a fraction such as 1/255."""
    if "/" in text:
        top, bottom = text.split("/", 1)
        return float(top) / float(bottom)
    return float(text)


def _words(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `import` subcommand's arguments (also used by this module's own `main`)."""
    parser.add_argument("model", type=Path, help="the ONNX image classifier to import")
    parser.add_argument(
        "--task",
        choices=["classification", "detection"],
        default="classification",
        help="detection: a YOLOv8/YOLO11-style [batch, 4 + classes, anchors] export "
        "(offline.importing.detection)",
    )
    parser.add_argument("--name", required=True, help="family name: lowercase [a-z0-9_]+")
    parser.add_argument("--labels", type=Path, required=True, help="labels file, one per line")
    parser.add_argument("--calibration", type=Path, required=True, help="folder of images")
    parser.add_argument(
        "--validation",
        type=Path,
        help="folder: <label>/<image> (labelled) or images directly (unlabelled); "
        "without it every fifth calibration image is held out",
    )
    parser.add_argument(
        "--repository",
        type=Path,
        # SUPPRESS lets `python -m offline --repository X import ...` keep the parent's value.
        default=argparse.SUPPRESS,
        help=f"model repository (default {DEFAULT_REPOSITORY})",
    )
    parser.add_argument("--replace", action="store_true", help="overwrite an existing model")
    parser.add_argument("--summary", help="one paragraph for the model card")
    spec = parser.add_argument_group(
        "preprocessing", "a JSON PreprocessSpec file and/or flags (flags win over the file)"
    )
    spec.add_argument("--spec", type=Path, help="JSON file of PreprocessSpec fields")
    spec.add_argument("--height", type=int)
    spec.add_argument("--width", type=int)
    spec.add_argument("--color-mode", choices=["L", "RGB"])
    spec.add_argument("--channel-order", choices=["RGB", "BGR"])
    spec.add_argument("--layout", choices=["NCHW", "NHWC"])
    spec.add_argument("--scale", type=_number, help="e.g. 1/255 or 0.00392")
    spec.add_argument("--mean", type=_floats, help="comma-separated, after scale")
    spec.add_argument("--std", type=_floats, help="comma-separated, after scale")
    spec.add_argument("--resize", choices=["stretch", "shorter_side", "letterbox", "fit_height"])
    spec.add_argument(
        "--resample",
        choices=["bilinear_antialias", "bilinear", "bicubic", "nearest", "area"],
        help="bilinear_antialias: Pillow's (default); bilinear, bicubic, nearest: OpenCV's; "
        "area: pixel-area averaging",
    )
    spec.add_argument("--resize-shorter-to", type=int)
    spec.add_argument("--crop", choices=["center", "none"])
    spec.add_argument("--pad-anchor", choices=["center", "top_left"])
    spec.add_argument("--pad-value", type=int, help="padding fill in pixels, 0-255")
    spec.add_argument(
        "--pad-tensor-value",
        type=_number,
        help="padding fill in input-tensor units (after scale, mean, std), e.g. 0",
    )
    spec.add_argument("--invert", action=argparse.BooleanOptionalAction, default=None)
    serving = parser.add_argument_group("serving")
    serving.add_argument("--max-batch-size", type=int, default=DEFAULT_BATCHING.max_batch_size)
    serving.add_argument("--preferred-batch-sizes", type=_ints, default=(), help="e.g. 8,16")
    serving.add_argument(
        "--max-queue-delay-us", type=int, default=DEFAULT_BATCHING.max_queue_delay_us
    )
    serving.add_argument("--max-queue-size", type=int, default=DEFAULT_BATCHING.max_queue_size)
    serving.add_argument(
        "--backend",
        choices=["onnxruntime", "openvino"],
        default=None,
        help="preferred backend for both variants (default: the faster one measured per variant)",
    )
    serving.add_argument(
        "--output-kind",
        choices=["logits", "probabilities"],
        default=None,
        help="default: read from the graph (a final Softmax means probabilities)",
    )
    build = parser.add_argument_group("quantization, gate and measurement")
    build.add_argument(
        "--quantizers",
        type=_words,
        default=tuple(QUANTIZERS),
        help=f"comma-separated (default {','.join(QUANTIZERS)})",
    )
    thresholds = GateThresholds()
    build.add_argument(
        "--max-drop-points",
        type=float,
        default=None,
        help=f"top-1 (classification, default {thresholds.max_drop_points}) or mAP@0.5 "
        f"(detection, default {MAX_DROP_POINTS}) drop allowed, in points",
    )
    build.add_argument("--min-agreement", type=float, default=thresholds.min_agreement)
    build.add_argument(
        "--opset",
        type=int,
        help="convert the graph to this opset first (onnx.version_converter), e.g. 13 for "
        "per-channel INT8",
    )
    parity = parser.add_argument_group("parity with the model's original pipeline")
    parity.add_argument(
        "--reference",
        nargs=2,
        type=Path,
        metavar=("IMAGES", "OUTPUTS_NPZ"),
        help="a folder of images and a .npz of what the original pipeline gave for them "
        "(names plus scores or labels); the import refuses below --min-parity",
    )
    parity.add_argument(
        "--min-parity",
        type=float,
        default=DEFAULT_MIN_PARITY,
        help=f"top-1 agreement required with --reference (default {DEFAULT_MIN_PARITY})",
    )
    detection = parser.add_argument_group("detection (--task detection)")
    defaults = DetectionParameters()
    detection.add_argument("--score-threshold", type=float, default=defaults.score_threshold)
    detection.add_argument("--iou-threshold", type=float, default=defaults.iou_threshold)
    detection.add_argument("--max-detections", type=int, default=defaults.max_detections)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of failures")
    build.add_argument("--measure-batch-sizes", type=_ints, default=(1, 8, 32))
    build.add_argument("--measure-duration-s", type=float, default=1.0)


def _batching(args: argparse.Namespace) -> Batching:
    return Batching(
        max_batch_size=args.max_batch_size,
        preferred_batch_sizes=args.preferred_batch_sizes,
        max_queue_delay_us=args.max_queue_delay_us,
        max_queue_size=args.max_queue_size,
    )


def run(args: argparse.Namespace) -> int:
    """Import from parsed arguments; returns 0. Refusals raise ServingError subclasses
    (ModelImportError, AccuracyGateFailed) for the caller's one error handler."""
    overrides = {field: getattr(args, field) for field in SPEC_FLAGS}
    if args.task == "detection":
        return _run_detection(args, overrides)
    try:
        batching = _batching(args)
        thresholds = GateThresholds(
            max_drop_points=GateThresholds().max_drop_points
            if args.max_drop_points is None
            else args.max_drop_points,
            min_agreement=args.min_agreement,
        )
    except ValidationError as exc:
        raise ModelImportError(f"invalid batching or gate settings: {exc}") from exc
    card = import_model(
        args.model,
        args.name,
        labels=args.labels,
        calibration=args.calibration,
        spec=load_spec_fields(args.spec, overrides),
        spec_source=f"{args.spec} and flags" if args.spec else "preprocessing flags",
        validation=args.validation,
        repository=getattr(args, "repository", DEFAULT_REPOSITORY),
        batching=batching,
        preferred_backend=args.backend,
        output_kind=args.output_kind,
        quantizers=args.quantizers,
        measure_batch_sizes=args.measure_batch_sizes,
        measure_duration_s=args.measure_duration_s,
        thresholds=thresholds,
        summary=args.summary,
        replace=args.replace,
        reference_files=tuple(args.reference) if args.reference else None,
        min_parity=args.min_parity,
        opset=args.opset,
    )
    log.info("published %s_fp32 and %s_int8: %s", card.family, card.family, card.gate.explain())
    if card.files.int8_size_note:
        log.warning("%s_int8: %s", card.family, card.files.int8_size_note)
    for failure in card.built.failed:
        log.warning("%s: quantizer %s failed: %s", card.family, failure.method, failure.reason)
    return 0


def _run_detection(args: argparse.Namespace, overrides: dict[str, object]) -> int:
    """`--task detection`: a YOLOv8-style detector through `offline.importing.detection`."""
    from offline.importing.detection import import_detector

    try:
        batching = _batching(args)
        parameters = DetectionParameters(
            score_threshold=args.score_threshold,
            iou_threshold=args.iou_threshold,
            max_detections=args.max_detections,
        )
    except ValidationError as exc:
        raise ModelImportError(f"invalid batching or detection settings: {exc}") from exc
    card = import_detector(
        args.model,
        args.name,
        labels=args.labels,
        calibration=args.calibration,
        spec_fields=load_spec_fields(args.spec, overrides),
        spec_source=f"{args.spec} and flags" if args.spec else "preprocessing flags",
        repository=getattr(args, "repository", DEFAULT_REPOSITORY),
        batching=batching,
        parameters=parameters,
        validation=args.validation,
        quantizers=args.quantizers,
        max_drop_points=MAX_DROP_POINTS if args.max_drop_points is None else args.max_drop_points,
        measure_duration_s=args.measure_duration_s,
        summary=args.summary,
    )
    verdict = card.gate.explain() if card.gate else "no INT8"
    log.info("published %s_fp32 and %s_int8: %s", card.family, card.family, verdict)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m offline.importing ...`: the same arguments; 2 on a refusal."""
    parser = argparse.ArgumentParser(prog="python -m offline.importing", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    return report_failures(lambda: run(args), subject=args.model, debug=args.debug)


def report_failures(action: Callable[[], int], *, subject: Path, debug: bool) -> int:
    """Run the command; any failure ends in one line on stderr and exit status 2, its
    traceback only with --debug. A refusal is worded where it is raised; anything else
    (a toolkit's own error) is named with its type and where it came from."""
    try:
        return action()
    except ServingError as exc:
        failure: BaseException = exc
        line = exc.message
    except ImportError as exc:
        failure = exc
        line = (
            f"the package {exc.name or exc} is not installed; reinstall the project (make "
            "setup), which declares every package the import needs"
        )
    except Exception as exc:
        failure = exc
        line = (
            f"{subject}: {failure_reason(exc)} (not a check of the import: rerun with --debug "
            "for the traceback, and report it)"
        )
    log.error("error: %s", line, exc_info=failure if debug else None)
    return 2
