"""The prediction log from the command line.

python -m monitoring review [--model NAME] [--limit N]   the review queue, one JSON object
python -m monitoring export NAME FOLDER                  labelled images as FOLDER/<label>/...
python -m monitoring drift --model NAME [--window-s S | --since T [--until T]] [--out DIR]
                                                         a drift check of a window of the log
python -m monitoring reference --model NAME [--images PATH] [--force]
                                                         the served version's drift reference

They read the database the settings name (`IMGSERVE_PREDICTION_LOG_URL`, or the embedded one
under `IMGSERVE_DATA_DIR`), the same one the server writes, and the model repository
(`IMGSERVE_REPOSITORY`). `drift` writes Evidently's HTML report and the JSON summary (also to
stdout), keeps them as the model's latest check (what the service serves at /v1/drift), and
exits 3 when the window holds too few predictions to judge.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("monitoring")
TOO_FEW_ROWS = 3


def _time(text: str) -> float:
    """Seconds since the epoch, from seconds or an ISO 8601 time (UTC when it names no zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither seconds nor an ISO time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _images(path: Path | None, family: str) -> tuple[tuple[bytes, ...], str]:
    """Reference images as clients send them, and what they are."""
    if path is None:
        from offline import digits

        if family != digits.FAMILY:
            raise SystemExit(f"{family}: name its held-out images with --images")
        return digits.heldout_pngs(), digits.HELDOUT_DESCRIPTION
    if path.suffix == ".npz":
        import numpy as np

        from offline.digits import encode_png

        with np.load(path) as archive:
            return tuple(encode_png(i) for i in archive["images"]), f"the images of {path.name}"
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise SystemExit(f"{path} holds no images")
    return tuple(p.read_bytes() for p in files), f"{len(files)} images under {path.name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monitoring",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    review = commands.add_parser("review", help="the review queue")
    review.add_argument("--model")
    review.add_argument("--limit", type=int, default=50)
    export = commands.add_parser("export", help="labelled images as an ImageFolder tree")
    export.add_argument("model")
    export.add_argument("folder", type=Path)
    check = commands.add_parser("drift", help="compare a window of the log with the reference")
    check.add_argument("--model", required=True)
    when = check.add_mutually_exclusive_group()
    when.add_argument("--window-s", type=float, help="the last S seconds (default: the setting)")
    when.add_argument("--since", type=_time, help="window start: seconds or ISO time")
    check.add_argument("--until", type=_time, help="window end (default: now)")
    check.add_argument("--min-rows", type=int, help="fewest predictions to judge")
    check.add_argument("--out", type=Path, help="also write drift.html and drift.json here")
    check.add_argument("--repository", type=Path, help="the model repository")
    reference = commands.add_parser("reference", help="make the served version's reference")
    reference.add_argument("--model", required=True)
    reference.add_argument("--images", type=Path, help=".npz (images) or a folder of images")
    reference.add_argument("--force", action="store_true", help="replace an existing one")
    reference.add_argument("--repository", type=Path, help="the model repository")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.command in ("review", "export"):
        return _review(args)
    from runners.errors import ServingError, TooFewRows

    try:
        if args.command == "drift":
            return _drift(args)
        return _reference(args)
    except TooFewRows as exc:
        log.error("%s", exc.message)
        return TOO_FEW_ROWS
    except ServingError as exc:
        log.error("%s", exc.message)
        return 2


def _repository(path: Path | None) -> Path:
    if path is not None:
        return path
    from serving.settings import ServingSettings

    return ServingSettings().repository


def _drift(args: argparse.Namespace) -> int:
    from monitoring import drift
    from monitoring.settings import DriftSettings

    settings = DriftSettings()
    end = args.until if args.until is not None else time.time()
    start = (
        args.since if args.since is not None else end - (args.window_s or settings.drift_window_s)
    )
    if start >= end:
        raise SystemExit(f"the window starts ({start}) at or after it ends ({end})")
    folder = settings.folder / args.model
    folder.mkdir(parents=True, exist_ok=True)
    html = folder / f".{drift.REPORT_HTML}.{time.time_ns()}"
    try:
        summary = drift.check(
            args.model,
            start,
            end,
            repository=_repository(args.repository),
            min_rows=args.min_rows or settings.drift_min_rows,
            html=html,
        )
        drift.store(summary, html, settings)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            drift.write_file(args.out / "drift.html", html.read_text())
            drift.write_file(args.out / "drift.json", json.dumps(summary, indent=2) + "\n")
    finally:
        html.unlink(missing_ok=True)
    sys.stdout.write(json.dumps(summary) + "\n")
    log.info("%s version %s: %s (score %.2f, %d predictions)", summary["model"],
             summary["version"], "DRIFTED" if summary["drifted"] else "no drift",
             summary["score"], summary["window"]["count"])  # fmt: skip
    return 0


def _reference(args: argparse.Namespace) -> int:
    from monitoring import drift

    images, description = _images(args.images, args.model)
    repository = _repository(args.repository)
    if not drift.ensure_reference(repository, args.model, images, description, force=args.force):
        log.info("%s already has its drift reference (--force makes it anew)", args.model)
    return 0


def _review(args: argparse.Namespace) -> int:
    from monitoring.review import ReviewQueue

    queue = ReviewQueue()
    try:
        if args.command == "review":
            sys.stdout.write(json.dumps(queue.pending(args.model, args.limit)) + "\n")
        else:
            count = queue.export(args.model, args.folder)
            log.info("wrote %d labelled images of %s under %s", count, args.model, args.folder)
    finally:
        queue.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
