"""A demo producer for deploy/: enqueue `send_email` and `thumbnail` tasks at a steady rate, forever.

Run with `python -m examples.producer --rate 5` (the broker comes from RABBITTASK_BROKER_URL).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time

from examples.emails import app, send_email, thumbnail
from rabbittask.settings import mask_url

log = logging.getLogger("examples.producer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.producer", description=__doc__)
    parser.add_argument("--rate", type=float, default=5.0, help="tasks per second (default 5)")
    parser.add_argument("--count", type=int, default=0, help="stop after this many tasks (default: never)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("producing %.1f task(s)/s to %s", args.rate, mask_url(app.settings.broker_url))
    counter = itertools.count(1) if args.count <= 0 else iter(range(1, args.count + 1))
    for n in counter:
        started = time.monotonic()
        if n % 2:
            send_email.delay(f"user{n}@example.com", f"hello #{n}")
        else:
            thumbnail.delay(n, size=128)
        if n % 100 == 0:
            log.info("%d task(s) confirmed by the broker", n)
        time.sleep(max(0.0, 1 / args.rate - (time.monotonic() - started)))
    app.close()


if __name__ == "__main__":
    main()
