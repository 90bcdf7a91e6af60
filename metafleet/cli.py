"""`fleet`: the command-line front door. Parse, validate, call one job function per command.

Exit codes (`metafleet.args`): 0 success, 2 bad input (config, names, URIs, paths: nothing was started or
changed), 1 a failure while running, 130/143 stopped by SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from metafleet import registry_commands, robot_commands, train_commands
from metafleet.args import EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet", description="metafleet: meta-train one policy for a robot fleet")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for commands in (train_commands, registry_commands, robot_commands):
        commands.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # MLflow logs every run start and system-metrics thread at INFO; keep job output readable.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "DEBUG" if args.verbose else "WARNING")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
