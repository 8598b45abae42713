"""`sinagotd`: keep a workspace processed. Exit codes: 0 stopped cleanly (or, with --once,
every step succeeded), 1 a step failed (--once) or the daemon could not run, 2 usage,
78 configuration error (systemd must not restart on it)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sinagot import __version__
from sinagot.errors import ConfigError, SinagotError

from .daemon import Daemon, Options
from .events import configure

EX_CONFIG = 78


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sinagotd",
        description="Watch a workspace's data folder and keep every record processed.",
    )
    parser.add_argument("--version", action="version", version=f"sinagotd {__version__}")
    parser.add_argument(
        "workspace",
        nargs="?",
        default=".",
        metavar="WORKSPACE",
        help="workspace folder or .toml file (default: the current folder)",
    )
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="a Dask scheduler (default: $SINAGOT_DASK_ADDRESS, [dask] address, "
        "else an embedded cluster)",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="process what is due, then exit: 0 if every step succeeded, else 1",
    )
    parser.add_argument(
        "--log-format",
        choices=("json", "console"),
        help="json (default when stdout is not a terminal) or console",
    )
    parser.add_argument(
        "--settle-seconds",
        type=float,
        metavar="S",
        help="act on a file once unchanged this long (default 2)",
    )
    args = parser.parse_args(argv)  # fmt: skip

    log = configure(args.log_format)
    options = Options(
        workspace=args.workspace,
        scheduler=args.scheduler,
        once=args.once,
        log_format=args.log_format,
        settle_seconds=args.settle_seconds,
    )
    daemon = Daemon(options, log)
    try:
        daemon.startup()
    except ConfigError as exc:
        log.error("config.invalid", path=str(args.workspace), error=str(exc))
        print(f"sinagotd: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except SinagotError as exc:
        log.error("daemon.failed", error=str(exc))
        print(f"sinagotd: {exc}", file=sys.stderr)
        return 1
    return daemon.serve()


if __name__ == "__main__":
    sys.exit(main())
