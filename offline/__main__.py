"""Offline model work from the command line.

python -m offline models [--profiles]    build whatever the repository is missing
python -m offline digits [--retrain]     build a new version of the default digits model
python -m offline detector [--retrain]   build a new version of the digit detector
python -m offline profile NAME|all       build a load-profile model
python -m offline import ...             bring your own ONNX image classifier or detector
                                         (--task detection)
python -m offline versions NAME          the registry's versions of a model and its aliases
python -m offline promote NAME VERSION   serve a registry version: repository, then champion
python -m offline rollout NAME start VERSION [--canary S] [--shadow S] [--hold]
python -m offline rollout NAME shares|promote|rollback|status ...
                                         a rollout beside the champion (either front end
                                         follows the repository; lifecycle.rollout)
python -m offline heldout                export the held-out digits to data/

Every build goes into a staging folder, is recorded in the model registry as a new version
(lifecycle.registry), and is served at once only when the model has no champion yet;
otherwise it is the challenger until it is promoted.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from lifecycle.promote import adopt, family_entries, promote, publish_built
from lifecycle.registry import Registry
from monitoring.drift import ensure_reference
from offline.detection import FAMILY as DETECTOR
from runners.errors import Conflict, ModelImportError, ServingError
from runners.precision import bf16_unavailable
from runners.repository import CARD_JSON
from runners.settings import REPO_ROOT

log = logging.getLogger("offline")
DEFAULT_REPOSITORY = REPO_ROOT / "model_repository"


def _missing(repository: Path, family: str) -> bool:
    entries = family_entries(repository, family)
    return not all(
        variant in entries and entries[variant].onnx_path.is_file() for variant in ("fp32", "int8")
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

    registry = Registry()
    builds: dict[str, Callable[[Path], object]] = {
        digits.FAMILY: functools.partial(digits.build, source=args.repository)
    }
    if args.profiles:
        for architecture, family in profiles.PROFILES.items():
            builds[family] = functools.partial(profiles.build, architecture)
    for family, build in builds.items():
        why = _why_build(args.repository, family)
        if why:
            log.info("building %s into %s (%s)", family, args.repository, why)
            # A rebuild that decides bf16 on this CPU replaces the model it rebuilt.
            publish_built(registry, args.repository, family, build, why, promote_anyway=True)
        else:
            if family == digits.FAMILY:  # the committed model: its reference, when missing
                ensure_reference(
                    args.repository, family, digits.heldout_pngs(), digits.HELDOUT_DESCRIPTION
                )
            adopt(registry, args.repository, family)
    # The committed digit detector, when the repository holds it: registered as it is
    # (`make detector` builds new versions, and decides its bf16 variant with the gate).
    adopt(registry, args.repository, DETECTOR)
    log.info("model repository %s is complete", args.repository)


def _digits(args: argparse.Namespace) -> None:
    from offline import digits

    how = "retrained" if args.retrain else "rebuilt from the served FP32 file"
    published = publish_built(
        Registry(),
        args.repository,
        digits.FAMILY,
        lambda staging: digits.build(
            staging, retrain=args.retrain, epochs=args.epochs, source=args.repository
        ),
        f"{how} ({args.epochs} epochs)" if args.retrain else how,
    )
    _report(published.version.number, digits.FAMILY, published.promoted)


def _detector(args: argparse.Namespace) -> None:
    from offline.detection import build as detector

    served = args.repository / f"{detector.FAMILY}_fp32"
    source = None
    if not args.retrain and served.is_dir():
        source = family_entries(args.repository, detector.FAMILY)["fp32"].onnx_path
    how = f"trained ({args.steps} steps)" if source is None else "rebuilt from the served FP32 file"
    published = publish_built(
        Registry(),
        args.repository,
        detector.FAMILY,
        lambda staging: detector.build(staging, source, steps=args.steps, bf16=not args.no_bf16),
        how,
    )
    _report(published.version.number, detector.FAMILY, published.promoted)


def _profile(args: argparse.Namespace) -> None:
    from offline import profiles

    names = list(profiles.PROFILES) if args.name == "all" else [args.name]
    for name in names:
        published = publish_built(
            Registry(),
            args.repository,
            profiles.PROFILES[name],
            functools.partial(profiles.build, name, measure_duration_s=args.measure_duration_s),
            f"load profile {name}",
        )
        _report(published.version.number, profiles.PROFILES[name], published.promoted)


def _report(number: int, family: str, promoted: bool) -> None:
    if promoted:
        log.info("published %s version %d: the champion, served", family, number)
    else:
        log.info(
            "registered %s version %d as the challenger; serve it with: "
            "python -m offline promote %s %d", family, number, family, number,
        )  # fmt: skip


def _import(args: argparse.Namespace) -> None:
    from offline.importing import cli

    repository = args.repository
    if family_entries(repository, args.name) and not args.replace:
        raise ModelImportError(
            f"{repository} already serves a model named {args.name!r}; --replace registers the "
            f"import as its next version"
        )

    def build(staging: Path) -> None:
        args.repository = staging
        cli.run(args)

    published = publish_built(Registry(), repository, args.name, build, "imported")
    _report(published.version.number, args.name, published.promoted)


def _versions(args: argparse.Namespace) -> None:
    for version in Registry().versions(args.name):
        sys.stdout.write(json.dumps(version.describe()) + "\n")


def _promote(args: argparse.Namespace) -> None:
    promote(Registry(), args.repository, args.name, args.version)


def _rollout(args: argparse.Namespace) -> None:
    from lifecycle import rollout

    registry, repository, name = Registry(), args.repository, args.name
    if args.action == "start":
        if args.version is None:
            raise Conflict("rollout start needs the registry version to roll out")
        rollout.start(
            registry, repository, name, args.version,
            canary_share=args.canary, shadow_share=args.shadow, decide=not args.hold,
        )  # fmt: skip
    elif args.action == "shares":
        rollout.set_shares(repository, name, args.canary, args.shadow)
    elif args.action == "promote":
        rollout.finish(registry, repository, name)
    elif args.action == "rollback":
        rollout.abort(registry, repository, name, args.reason)
    state = rollout.rollout_of(repository, name)
    sys.stdout.write(json.dumps({"model": name, "rollout": state and state.model_dump()}) + "\n")


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
    detector = commands.add_parser("detector", help="publish the digit detector")
    detector.add_argument("--retrain", action="store_true", help="train anew (needs torch)")
    detector.add_argument("--steps", type=int, default=2400, help="training steps of 32")
    detector.add_argument(
        "--no-bf16", action="store_true", help="try no BF16 variant (files to commit)"
    )
    detector.set_defaults(handler=_detector)
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
    versions = commands.add_parser("versions", help="a model's registry versions, one JSON each")
    versions.add_argument("name")
    versions.set_defaults(handler=_versions)
    promoted = commands.add_parser(
        "promote", help="serve a registry version (write the repository, then the champion alias)"
    )
    promoted.add_argument("name")
    promoted.add_argument("version", type=int)
    promoted.set_defaults(handler=_promote)
    rolling = commands.add_parser(
        "rollout", help="roll a registry version out beside the champion, or end a rollout"
    )
    rolling.add_argument("name")
    rolling.add_argument("action", choices=["start", "shares", "promote", "rollback", "status"])
    rolling.add_argument("version", type=int, nargs="?", help="start: the version")
    rolling.add_argument("--canary", type=float, default=0.0, help="share answered by it")
    rolling.add_argument("--shadow", type=float, default=0.0, help="share also run on it")
    rolling.add_argument("--hold", action="store_true", help="no automatic decision")
    rolling.add_argument("--reason", default="rolled back by hand", help="rollback: why")
    rolling.set_defaults(handler=_rollout)
    heldout = commands.add_parser("heldout", help="export the held-out digits split")
    heldout.set_defaults(handler=_heldout)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.command == "import":
        # Every failure of an import ends in one line; --debug adds the traceback.
        return importing.report_failures(
            lambda: args.handler(args) or 0, subject=args.model, debug=args.debug
        )
    try:
        args.handler(args)
    except ServingError as exc:
        log.error("error: %s", exc.message)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
