"""Retraining from the command line.

python -m lifecycle retrain NAME [--epochs N] [--reason TEXT] [--background]
                                   retrain a served model on its labelled data; the result
                                   is registered (and rolled out) only through the gates
python -m lifecycle jobs NAME      its retrain jobs, newest first, one JSON line each
python -m lifecycle run-job FOLDER the process a background job runs in (started for you)

They read the data directory (`IMGSERVE_DATA_DIR`) and the settings of `lifecycle.settings.
RetrainSettings`; the repository is `--repository` (default: `IMGSERVE_REPOSITORY`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lifecycle.retrain import LOG_FILE, Job, Jobs, dump, request_retrain
from runners.errors import ServingError

log = logging.getLogger("lifecycle")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lifecycle", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)
    retrain = commands.add_parser("retrain", help="retrain a model on its labelled data")
    retrain.add_argument("name")
    retrain.add_argument("--epochs", type=int, choices=range(1, 1001), metavar="N", default=None)
    retrain.add_argument("--reason", default="manual")
    retrain.add_argument("--repository", type=Path, default=None)
    retrain.add_argument("--background", action="store_true", help="start it and return")
    jobs = commands.add_parser("jobs", help="a model's retrain jobs")
    jobs.add_argument("name")
    run_job = commands.add_parser("run-job", help="run a recorded job (its own process)")
    run_job.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        if args.command == "run-job":
            from lifecycle.retrain_run import run

            job = run(args.folder)
        elif args.command == "jobs":
            for found in Jobs().of(args.name):
                sys.stdout.write(dump(found) + "\n")
            return 0
        elif args.background:
            job = request_retrain(args.name, args.reason, epochs=args.epochs,
                                  repository=args.repository)  # fmt: skip
            log.info("started retrain job %s (log: %s)", job.job, Jobs().folder(job) / LOG_FILE)
        else:
            job = _foreground(args)
    except ServingError as exc:
        log.error("error: %s", exc.message)
        return 2
    sys.stdout.write(dump(job) + "\n")
    return 0 if job.state in ("queued", "running", "registered") else 1


def _foreground(args: argparse.Namespace) -> Job:
    """The job in this process, its log written to the job's log file too."""
    from lifecycle.retrain_run import run
    from serving.settings import ServingSettings

    jobs = Jobs()
    repository = (args.repository or ServingSettings().repository).resolve()
    job = jobs.create(args.name, args.reason, args.epochs, repository)
    handler = logging.FileHandler(jobs.folder(job) / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        return run(jobs.folder(job))
    finally:
        logging.getLogger().removeHandler(handler)


if __name__ == "__main__":
    raise SystemExit(main())
