"""The prediction log from the command line.

python -m monitoring review [--model NAME] [--limit N]   the review queue, one JSON object
python -m monitoring export NAME FOLDER                  labelled images as FOLDER/<label>/...

Both read the database the settings name (`IMGSERVE_PREDICTION_LOG_URL`, or the embedded one
under `IMGSERVE_DATA_DIR`), the same one the server writes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from monitoring.review import ReviewQueue

log = logging.getLogger("monitoring")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    review = commands.add_parser("review", help="the review queue")
    review.add_argument("--model")
    review.add_argument("--limit", type=int, default=50)
    export = commands.add_parser("export", help="labelled images as an ImageFolder tree")
    export.add_argument("model")
    export.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
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
