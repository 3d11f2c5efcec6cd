"""Offline model work from the command line.

python -m offline models [--profiles]    build whatever the repository is missing
python -m offline digits [--retrain]     (re)publish the default digits model
python -m offline profile NAME|all       build a load-profile model
python -m offline import ...             bring your own ONNX image classifier
python -m offline heldout                export the held-out digits to data/
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from runners.errors import ServingError
from runners.precision import bf16_unavailable
from runners.repository import CARD_JSON
from runners.settings import REPO_ROOT

log = logging.getLogger("offline")
DEFAULT_REPOSITORY = REPO_ROOT / "model_repository"


def _missing(repository: Path, family: str) -> bool:
    return not all(
        (repository / f"{family}_{variant}" / "config.pbtxt").is_file()
        and (repository / f"{family}_{variant}" / "1" / "model.onnx").is_file()
        for variant in ("fp32", "int8")
    )


def _bf16_undecided(repository: Path, family: str) -> bool:
    """On a CPU with BF16: True when the family's card did not decide BF16 on such a CPU (a
    card built on a CPU without it never tried BF16, so its verdict does not hold here)."""
    if bf16_unavailable() is not None:
        return False
    try:
        card = json.loads((repository / f"{family}_fp32" / CARD_JSON).read_text())
    except (OSError, ValueError):
        return True
    decision = card.get("bf16") or {}
    return not decision.get("cpu_has_bf16", False)


def _why_build(repository: Path, family: str) -> str | None:
    if _missing(repository, family):
        return "missing"
    if _bf16_undecided(repository, family):
        return "built on a CPU without BF16: deciding its bf16 variant on this one"
    return None


def _models(args: argparse.Namespace) -> None:
    from offline import digits, profiles

    why = _why_build(args.repository, digits.FAMILY)
    if why:
        log.info("building the default model (digits) into %s (%s)", args.repository, why)
        digits.build(args.repository)
    if args.profiles:
        for architecture, family in profiles.PROFILES.items():
            why = _why_build(args.repository, family)
            if why:
                log.info("building load profile %s into %s (%s)", family, args.repository, why)
                profiles.build(architecture, args.repository)
    log.info("model repository %s is complete", args.repository)


def _digits(args: argparse.Namespace) -> None:
    from offline import digits

    card = digits.build(args.repository, retrain=args.retrain, epochs=args.epochs)
    log.info("published digits: %s", card.gate.explain())


def _profile(args: argparse.Namespace) -> None:
    from offline import profiles

    names = list(profiles.PROFILES) if args.name == "all" else [args.name]
    for name in names:
        card = profiles.build(name, args.repository, measure_duration_s=args.measure_duration_s)
        log.info("published %s: %s", card.family, card.gate.explain())


def _import(args: argparse.Namespace) -> None:
    from offline.importing import cli

    cli.run(args)


def _heldout(_: argparse.Namespace) -> None:
    from offline.data import write_heldout

    log.info("wrote %s", write_heldout())


def main(argv: list[str] | None = None) -> int:
    from offline.importing import cli as importing

    parser = argparse.ArgumentParser(prog="python -m offline", description=__doc__)
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    commands = parser.add_subparsers(dest="command", required=True)
    models = commands.add_parser("models", help="build what the repository is missing")
    models.add_argument("--profiles", action="store_true", help="also the load profiles")
    models.set_defaults(handler=_models)
    digits = commands.add_parser("digits", help="publish the default digits model")
    digits.add_argument("--retrain", action="store_true", help="train anew (needs torch)")
    digits.add_argument("--epochs", type=int, default=30)
    digits.set_defaults(handler=_digits)
    profile = commands.add_parser("profile", help="build a load-profile model")
    profile.add_argument("name", choices=["mobilenet_v2", "resnet50", "all"])
    profile.add_argument("--measure-duration-s", type=float, default=1.0)
    profile.set_defaults(handler=_profile)
    imported = commands.add_parser(
        "import",
        help="bring your own ONNX image classifier",
        description=importing.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    importing.add_arguments(imported)
    imported.set_defaults(handler=_import)
    heldout = commands.add_parser("heldout", help="export the held-out digits split")
    heldout.set_defaults(handler=_heldout)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        args.handler(args)
    except ServingError as exc:
        log.error("error: %s", exc.message)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
